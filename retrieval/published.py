"""Published Recall@K of the CGD paper, shown beside ours by ``retrieval-benchmark``.

Source: Jun, Ko, Kim, Kim, Kim 2019, "Combination of Multiple Global Descriptors for Image
Retrieval", arXiv:1903.10663 — the best configuration per dataset (ResNet-50, 1536-d):
CUB-200-2011 with MG, CARS196 with SG, Stanford Online Products with SG, In-Shop with GS.

Only numbers that could be checked against stored text are filled in; every other K is
None (printed "n/a"), never a guess. Verified: Recall@1 of each dataset, as listed under
"Results from the Paper" on paperswithcode.com/paper/combination-of-multiple-global-descriptors-1
(CARS196 94.8, CUB-200-2011 79.2, In-Shop 91.9, SOP 84.2; the same four claims on
sotaverified.org/papers/combination-of-multiple-global-descriptors). The higher K of the
paper's tables were not available to check.

Crops: the CGD paper evaluates CUB and Cars on bounding-box crops (DESIGN.md "Datasets";
the authors' evaluation code, github.com/naver/cgd test.py, reads a bounding-box file for
CUB200). SOP and In-Shop have no boxes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

SOURCE = ('Jun et al. 2019, "Combination of Multiple Global Descriptors for Image Retrieval", '
          "arXiv:1903.10663")


@dataclass(frozen=True)
class Published:
    """One dataset's published result: Recall@K in percent (None = not verified), and its setting."""
    dataset: str  # data.name: cub | cars | sop | inshop
    setting: str  # backbone, descriptors, embedding size
    crop: bool | None  # bounding-box crops (None: the dataset has no boxes)
    recall: dict[int, float | None] = field(default_factory=dict)  # K → Recall@K in %
    source: str = SOURCE

    def at(self, k: int) -> float | None:
        """Recall@k in percent, or None when not published or not verified."""
        return self.recall.get(int(k))

    @property
    def crop_text(self) -> str:
        return "n/a (no boxes)" if self.crop is None else ("bounding-box crops" if self.crop else "no crop")


# K lists as the paper's tables (DESIGN.md "Metrics"); only verified values are set.
CGD_PAPER: dict[str, Published] = {
    "cub": Published("cub", "ResNet-50, CGD MG, 1536-d", True, {1: 79.2, 2: None, 4: None, 8: None}),
    "cars": Published("cars", "ResNet-50, CGD SG, 1536-d", True, {1: 94.8, 2: None, 4: None, 8: None}),
    "sop": Published("sop", "ResNet-50, CGD SG, 1536-d", None, {1: 84.2, 10: None, 100: None, 1000: None}),
    "inshop": Published("inshop", "ResNet-50, CGD GS, 1536-d", None,
                        {1: 91.9, 10: None, 20: None, 30: None, 40: None, 50: None}),
}


def published_recall(dataset: str) -> Published | None:
    """The CGD paper's result for ``dataset`` (a data.name), or None for datasets it did not report."""
    return CGD_PAPER.get(dataset)
