"""The pseudo-defect generator: synthetic defects pasted into a category's normal images for pretraining.

Not a dataset adapter (it registers nothing). The paper's §3.5 and docs/method-notes.md §6::

    from bench.datasets.pseudo import PseudoConfig, PseudoDefectGenerator, load_textures
    gen = PseudoDefectGenerator(train_paths, load_textures(None), "screw", PseudoConfig(), seed=1)

Modules: :mod:`~bench.datasets.pseudo.generator` (masks, blending, episodes), :mod:`~bench.datasets.pseudo.textures`
(DTD or built-in texture banks) and :mod:`~bench.datasets.pseudo.foreground` (where a defect may be pasted).
"""

from bench.datasets.pseudo.generator import PseudoConfig, PseudoDefectGenerator
from bench.datasets.pseudo.textures import TextureBank, load_textures

__all__ = ["PseudoConfig", "PseudoDefectGenerator", "TextureBank", "load_textures"]
