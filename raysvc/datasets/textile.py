"""Simulated textile defects (PyPI ``conformal-clip-data``)."""

from __future__ import annotations

from raysvc.datasets import DATASETS
from raysvc.datasets.base import DatasetSource, ImageDataset
from raysvc.datasets.folder import image_folder
from raysvc.errors import DatasetError


@DATASETS.register
class Textile(DatasetSource):
    """Textile: 2000 simulated fabric images, flawless or with a local or global defect."""

    name = "textile"

    def load(self) -> ImageDataset:
        try:
            import conformal_clip_data
        except ImportError:
            raise DatasetError("textile needs the package: pip install conformal-clip-data") from None
        root = conformal_clip_data.textile_simulated_root()
        # folder names are terse; these names say what each class looks like
        names = {"nominal": "flawless fabric", "local": "fabric with a small local defect",
                 "global": "fabric with a large defect"}
        return image_folder(root, name="textile", classnames=names, template="a photo of {}.")
