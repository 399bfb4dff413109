"""The CLIP-driven Universal Model: text vocabularies, network, checkpoints, loss, transforms, training.

Modules:
    text        prompt templates V1-V4, text encoders (open_clip CLIP, an offline MiniLM stand-in) and the
                ``TextVocabulary`` (class names + embeddings + provenance) a model is built from.
    network     ``UniversalModel``: backbone + text-conditioned dynamic heads, one sigmoid mask per class.
    checkpoint  the original release files, and this project's own checkpoint format.
    loss        the partial-label loss (BCE + Dice on annotated classes only).
    transforms  the paper's MONAI preprocessing and augmentation pipeline.
    train       ``train(cases, config, out_dir, ...)``: resumable training, single process or DDP.

Importing this package imports nothing heavy; import the submodules you need.
"""
