"""Few-shot adaptation of a trained space (``align adapt``): k-shot draws, the methods (linear
probes, Tip-Adapter(-F), CoOp, CoCoOp), the protocol over shots and seeds, base-to-novel, reports.
The fitted heads and their file format live in ``align.model.adapted`` (inference needs no fitting)."""
