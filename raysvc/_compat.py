"""Import torchvision on hosts where its compiled ops cannot load.

The torchvision wheel pinned with the CPU torch build ships CUDA-linked ops; on a
CPU-only host ``import torchvision`` then fails while registering fake kernels for
``torchvision::nms`` and friends. open_clip, timm and transformers import
torchvision, so they fail too. raysvc never calls those ops, so when (and only
when) that failure happens we skip the registrations and import again.
"""

from __future__ import annotations

import sys
import types

_META_MODULE = "torchvision._meta_registrations"
skipped_op_registrations = False


def import_torchvision():
    """Return the torchvision module, skipping its op registrations if they fail."""
    global skipped_op_registrations
    try:
        import torchvision
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules[_META_MODULE] = types.ModuleType(_META_MODULE)
        import torchvision

        skipped_op_registrations = True
    return torchvision
