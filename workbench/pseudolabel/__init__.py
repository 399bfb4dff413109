"""Pseudo-labelling: fill the classes a scan lacks with a Universal Model's predictions, with uncertainty.

One module per stage of the job (nnU-Net's inference / post-processing line):

* ``segmenter``: the checkpoint loaded for inference (:class:`Segmenter`), the device;
* ``inference``: preprocessing, sliding-window inference with AMP and test-time augmentation, and the
  way back onto the scan's original grid;
* ``postprocess``: the anatomy rules, one function each, in an ordered list the run records;
* ``uncertainty``: the catalog's reference statistics and the signals of every scan x class;
* ``scoring``: signals -> severities -> the queue score and its reasons; rescoring a finished run;
* ``jobs``: planning the scans from the catalog and the pure per-scan computation;
* ``run``: the one driver loop (local or Ray), the catalog writes, orphan collection, :func:`pseudolabel`;
* ``ray``: the Ray executor and :func:`pseudolabel_ray`.

The uncertainty maps live in ``storage.maps``.

Example:
    >>> from workbench.pseudolabel import pseudolabel  # doctest: +SKIP
    >>> pseudolabel(ws, "ws/models/latest/last.pt", low_res_mm=3.0).lines()  # doctest: +SKIP
"""

from workbench.pseudolabel.inference import (
    THRESHOLD,
    TTA_SCALE,
    TTA_SHIFT,
    LowResPrediction,
    predict_lowres,
    to_original_grid,
)
from workbench.pseudolabel.jobs import JobOptions, ScanJob, ScanResult, plan_jobs, run_scan_job
from workbench.pseudolabel.postprocess import RULE_NAMES, RULES, PostprocessResult, postprocess
from workbench.pseudolabel.ray import RayExecutor, pseudolabel_ray
from workbench.pseudolabel.run import (
    Executor,
    LocalExecutor,
    PseudolabelSummary,
    finish_run,
    pseudolabel,
    run_jobs,
    start_run,
    write_scan_result,
)
from workbench.pseudolabel.segmenter import Segmenter, resolve_device

__all__ = [
    "RULES",
    "RULE_NAMES",
    "THRESHOLD",
    "TTA_SCALE",
    "TTA_SHIFT",
    "Executor",
    "JobOptions",
    "LocalExecutor",
    "LowResPrediction",
    "PostprocessResult",
    "PseudolabelSummary",
    "RayExecutor",
    "ScanJob",
    "ScanResult",
    "Segmenter",
    "finish_run",
    "plan_jobs",
    "postprocess",
    "predict_lowres",
    "pseudolabel",
    "pseudolabel_ray",
    "resolve_device",
    "run_jobs",
    "run_scan_job",
    "start_run",
    "to_original_grid",
    "write_scan_result",
]
