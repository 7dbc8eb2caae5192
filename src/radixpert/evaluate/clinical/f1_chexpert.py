"""F1-CheXpert: F1 over CheXpert observations labelled by radixpert's rule-based labeler.

Both sides are labelled with `radixpert.evaluate.clinical.chexpert_rules` (regular
expressions, no model) and compared with `label_f1_results`, the scoring F1-CheXbert uses.
The labels are CheXpert-style, not CheXbert's, so these numbers are not comparable with
published F1-CheXbert values; they need no weights and run anywhere in seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from radixpert.evaluate.base import Metric, MetricResult

log = logging.getLogger(__name__)


class F1CheXpert(Metric):
    """F1-CheXpert-14 / -5, micro and macro, uncertain as positive (and ``-uneg`` variants).

    The primary result is ``f1-chexpert-14-micro``; the seven companions are in `extra`.
    """

    name = "f1-chexpert"
    higher_is_better = True
    requires: tuple[str, ...] = ()
    description = (
        "F1 over the 14 / 5 CheXpert observations from radixpert's rule-based labeler "
        "(not CheXbert); micro and macro"
    )

    def __init__(self) -> None:
        # No options (the labeler has no settings). An explicit signature also tells the
        # registry, which offers every metric the shared CLI options, to pass none here.
        super().__init__()

    def compute(self, references: Sequence[str], candidates: Sequence[str]) -> MetricResult:
        """Label both sides and score them per observation.

        Raises:
            ValueError: references and candidates differ in length.
        """
        import radixpert
        from radixpert.evaluate.clinical.chexpert_rules import LABELER_NAME, label_reports
        from radixpert.evaluate.clinical.label_f1 import label_f1_results

        if len(references) != len(candidates):
            raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
        refs = label_reports(references)
        cands = label_reports(candidates)
        log.debug("labelled %d report pairs with %s", len(refs), LABELER_NAME)
        settings = {
            "labeler": LABELER_NAME,
            "label_source": "report text as given (findings / impression chosen by the caller)",
            "label_values": "blank None, positive 1, negative 0, uncertain -1 (CheXpert)",
        }
        result = label_f1_results(self.name or "f1-chexpert", refs, cands, settings)
        for r in result.flatten():
            r.versions = {"radixpert": radixpert.__version__, **r.versions}
        return result
