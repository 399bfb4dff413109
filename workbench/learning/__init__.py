"""The learning wing: text vocabularies, training from the catalog, the held-out split, evaluation, the
simulated expert and active-learning rounds.

* :mod:`~workbench.learning.vocabularies`: class-name embeddings stored in the catalog (``embed``);
* :mod:`~workbench.learning.catalog_training`: ``workbench.model.train`` fed by the catalog, recorded as
  a run;
* :mod:`~workbench.learning.split`: the held-out split, chosen once per workspace, never trained on;
* :mod:`~workbench.learning.metrics`: Dice, NSD and tumour detection (pure, no catalog);
* :mod:`~workbench.learning.evaluation`: held-out evaluation against the catalog, stored with its report;
* :mod:`~workbench.learning.simulated_expert`: a reviewer that corrects queued items with a known truth;
* :mod:`~workbench.learning.rounds`: review, fine-tune, evaluate, pseudo-label; one recorded row per round.

Example:
    >>> from workbench.learning import embed, run_round, tiny_config  # doctest: +SKIP
    >>> name, _ = embed(ws, encoder="minilm")  # doctest: +SKIP
    >>> run_round(ws, vocabulary=name, config=tiny_config()).lines()  # doctest: +SKIP

The function ``rounds.rounds`` (the recorded rounds) is not re-exported: it would shadow the submodule.
"""

from workbench.learning.catalog_training import catalog_train_cases, train_from_catalog
from workbench.learning.evaluation import Evaluation, evaluate, evaluate_predictions
from workbench.learning.metrics import ScanTruth, dice, dice_nsd
from workbench.learning.rounds import Reviewer, RoundResult, learning_curves, run_round, tiny_config
from workbench.learning.simulated_expert import PhantomSpec, PhantomTruth, SimulatedExpert, StoredTruth
from workbench.learning.split import held_out_split, training_scan_ids
from workbench.learning.vocabularies import embed, import_release_vocabulary, load_vocabulary

__all__ = [
    "Evaluation",
    "PhantomSpec",
    "PhantomTruth",
    "Reviewer",
    "RoundResult",
    "ScanTruth",
    "SimulatedExpert",
    "StoredTruth",
    "catalog_train_cases",
    "dice",
    "dice_nsd",
    "embed",
    "evaluate",
    "evaluate_predictions",
    "held_out_split",
    "import_release_vocabulary",
    "learning_curves",
    "load_vocabulary",
    "run_round",
    "tiny_config",
    "train_from_catalog",
    "training_scan_ids",
]
