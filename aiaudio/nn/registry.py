"""Encoders by name, through timm's model registry.

Any model registered with ``timm.models.register_model`` whose entry point takes ``inv_dim`` and ``in_chans`` and
returns an *invariance encoder* can be named in a config: a module with ``forward(x, i) -> [B, num_features]``, an
int ``num_features`` and a bool ``amortised`` (False when it ignores ``i``, as a plain baseline does). Registering a
new model (in any package) needs no edit here.

Example:
    >>> kwargs = encoder_kwargs("hyper_resnet18", inv_dim=7, in_chans=1, options={"width": 0.5, "vit_depth": 12})
    >>> sorted(kwargs)   # options the entry point does not name are dropped
    ['in_chans', 'inv_dim', 'width']
    >>> encoder = create_encoder("hyper_resnet18", kwargs)
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

import timm
from torch import nn

import aiaudio.nn.resnet  # noqa: F401  (registers this package's encoders)

log = logging.getLogger(__name__)

#: Names configs used before every encoder went through the registry, and what they name now.
ENCODER_ALIASES: dict[str, str] = {"resnet18": "plain_resnet18", "resnet50": "plain_resnet50"}


def canonical_encoder_name(name: str) -> str:
    """``name``, or the registered name an old alias (``resnet18``) stands for."""
    if name in ENCODER_ALIASES:
        log.info("model.encoder=%s now names %s (the plain baseline)", name, ENCODER_ALIASES[name])
        return ENCODER_ALIASES[name]
    return name


def _entry_point(name: str):
    if not timm.is_model(name):
        ours = sorted(n for n in timm.list_models() if n.startswith(("hyper_", "plain_", "prompt_")))
        raise ValueError(
            f"unknown encoder {name!r}: it is not registered with timm; registered invariance encoders: {ours} "
            "(a model in another package is registered when that package is imported)"
        )
    return timm.models.model_entrypoint(name)


def encoder_kwargs(
    name: str, inv_dim: int, in_chans: int, options: Mapping[str, Any] | None = None,
    args: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The keyword arguments that build encoder ``name``: ``inv_dim``, ``in_chans``, the ``options`` its entry point
    names (the others are dropped: a plain model takes no hypernetwork size), and every one of ``args``."""
    entry = _entry_point(name)
    parameters = inspect.signature(entry).parameters
    named = {key for key, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD} - {"pretrained"}
    kwargs: dict[str, Any] = {"inv_dim": inv_dim, "in_chans": in_chans}
    kwargs.update({key: value for key, value in (options or {}).items() if key in named})
    kwargs.update(args or {})
    return kwargs


def create_encoder(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """``timm.create_model(name, **kwargs)``, checked to be an invariance encoder (see the module docstring)."""
    _entry_point(name)
    try:
        model = timm.create_model(name, pretrained=False, **dict(kwargs))
    except TypeError as error:
        raise ValueError(f"encoder {name!r} does not take the arguments {dict(kwargs)}: {error}") from None
    if not isinstance(getattr(model, "num_features", None), int) or not isinstance(getattr(model, "amortised", None), bool):
        raise ValueError(
            f"{name!r} is not an invariance encoder (it needs forward(x, i), an int num_features and a bool "
            "amortised); for a plain baseline use plain_resnet18 or plain_resnet50"
        )
    return model
