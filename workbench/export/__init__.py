"""Data out: harmonized labels exported in standard layouts, each with a manifest of SHA-256 hashes.

* :mod:`~workbench.export.abdomenatlas`: ``<case>/ct.nii.gz`` + ``segmentations/<class>.nii.gz``.
* :mod:`~workbench.export.nnunet`: an nnU-Net v2 raw dataset.
* :mod:`~workbench.export.monai_datalist`: a MONAI datalist with cross-validation folds.
* :mod:`~workbench.export.labelmap`: label values, the ignore label, painting and the manifest of the two
  label-map formats; :mod:`~workbench.export.nifti`: the NIfTI files and case names of every export.
* :mod:`~workbench.export.selection`: the scans and labels of every export (the assembly rule, the
  ``pseudo`` policy, the held-out split left out); :mod:`~workbench.export.ignore`: where a partial
  label map says ``ignore``; :mod:`~workbench.export.intensity`: CT statistics over annotated voxels.

The names below are re-exported so ``from workbench.export import export_nnunet`` works;
``file_sha256`` (:mod:`storage.files`) stays importable from here for the callers of the old flat module.
"""

from __future__ import annotations

from storage.files import file_sha256
from workbench.export.abdomenatlas import export_abdomenatlas
from workbench.export.intensity import patch_intensity_properties
from workbench.export.labelmap import label_map, label_values, verify_manifest
from workbench.export.monai_datalist import assign_folds, export_monai
from workbench.export.nifti import ct_array, export_case_name, save_nifti, scan_export_name, write_nifti
from workbench.export.nnunet import export_nnunet
from workbench.export.selection import PSEUDO_CHOICES

__all__ = [
    "PSEUDO_CHOICES",
    "assign_folds",
    "ct_array",
    "export_abdomenatlas",
    "export_case_name",
    "export_monai",
    "export_nnunet",
    "file_sha256",
    "label_map",
    "label_values",
    "patch_intensity_properties",
    "save_nifti",
    "scan_export_name",
    "verify_manifest",
    "write_nifti",
]
