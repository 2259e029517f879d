"""Single-device networks, by family: GANs (``mlp_gan``, ``dcgan``, ``biggan``, ``biggan_deep``,
``progan``), the VQ tokenizer (``vqgan``) and the transformer prior (``gpt``).

Nothing here knows about ranks, configs or tasks: a family is a module with its networks, a
dataclass of its ``model.arch`` options and a builder registered with
:func:`~bigtrain.models.registry.register_model` (see that module for the builders' contract).
"""

# the package's public names are the registry's (``bigtrain.models.registry.__all__``)
from bigtrain.models.registry import *  # noqa: F403
from bigtrain.models.registry import __all__  # noqa: F401
