"""The tiny image<->text model every training test builds."""

# A tiny image<->text AlignModel (open_clip towers built from config) that builds in well under
# a second once open_clip is imported (the standalone worker scripts beside this file import it too).
TINY_MODALITIES = {
    "image": {
        "options": {
            "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
            "output_dim": 32,
        }
    },
    "text": {
        "options": {
            "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
            "output_dim": 32,
        }
    },
}


# A slightly larger one (patch 4, 12 text tokens) that learns sklearn's digits in ~150 steps: the
# training-loop, search and serving tests train it
DIGITS_MODEL = {
    "embed_dim": 32,
    "modalities": {
        "image": {
            "options": {
                "vision_cfg": {"image_size": 16, "patch_size": 4, "width": 32, "layers": 1, "head_width": 16},
                "output_dim": 32,
            }
        },
        "text": {
            "options": {
                "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
                "output_dim": 32,
            }
        },
    },
}
