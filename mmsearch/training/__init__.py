"""Training and evaluation: captioned datasets, Recall@K as the field computes it, and
contrastive fine-tuning of the dual encoder (``mmsearch eval`` / ``mmsearch train``)."""
