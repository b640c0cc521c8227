"""The generator kit: what a generator of one's own builds on. ``data`` (loading,
checking, splitting, encoding and caching examples), ``synthetic`` (the offline
sentiment task), ``models`` (building backbones and heads, rebuilding a stored model),
``finetune`` (one member's fine-tuning set-up and batches) and ``qa`` (SQuAD scoring).
"""
