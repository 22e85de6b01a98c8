from align.app.cli import main

raise SystemExit(main())
