"""timm CNN backbones used as spectrogram feature extractors.

The backbone is built headless (`num_classes=0, global_pool=""`) so `forward_features` keeps both the
frequency and the time axis: the heads decide how to pool, and the framewise head must keep time.
Weights are never downloaded (no network on the training machines); ImageNet or earlier-round weights come
from a local file through `pretrained_path`, with the first convolution adapted to the spectrogram's
channel count (1 log-mel channel, or 2 with the frequency-position channel).
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

# Wrappers around a model's weights in checkpoints written by common trainers.
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema")
# Prefixes added by DDP, Lightning modules and this library's SpeciesDetector.
_STRIP_PREFIXES = ("module.", "model.", "backbone.")


def create_backbone(name: str, in_chans: int, pretrained_path: str | None = None, **timm_kwargs) -> nn.Module:
    """Build a headless timm model taking `in_chans` channels; optionally load local weights.

    `forward_features(x)` of the result maps (B, in_chans, F, T) to (B, num_features, F', T').
    """
    if not timm.is_model(name):
        family = name.split("_")[0]
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = close or timm.list_models(f"{family}*")[:10]
        raise ValueError(
            f"unknown timm model {name!r}; close names: {hint}. "
            f"List candidates with timm.list_models('{family}*')."
        )
    model = timm.create_model(
        name, pretrained=False, num_classes=0, global_pool="", in_chans=in_chans, **timm_kwargs
    )
    prune_unused_modules(model)
    if pretrained_path is not None:
        load_pretrained(model, pretrained_path)
    return model


def prune_unused_modules(model: nn.Module, size: int = 64) -> list[str]:
    """Replace top-level children that `forward_features` never uses with `nn.Identity`.

    Some timm families (MobileNetV3/V4, LCNet, GhostNet, ...) keep a `conv_head` that only runs in
    `forward_head`. Left in place, its parameters never get a gradient, which makes DDP fail unless
    `find_unused_parameters=True` (slow), and it wastes memory and optimizer state. Found by one small dry
    run (eval mode, so BatchNorm statistics are untouched). Returns the pruned names, also kept in
    `model.pruned_modules` so `load_pretrained` can skip their weights quietly.
    """
    first = next(p for p in model.parameters() if p.dim() == 4)
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    try:
        model.forward_features(torch.zeros(1, first.shape[1], size, size, device=first.device)).sum().backward()
    finally:
        model.train(was_training)
    pruned = []
    for name, child in list(model.named_children()):
        params = list(child.parameters())
        if params and all(p.grad is None for p in params):
            setattr(model, name, nn.Identity())
            pruned.append(name)
    model.zero_grad(set_to_none=True)
    model.pruned_modules = tuple(pruned)
    if pruned:
        log.debug("pruned modules unused by forward_features: %s", pruned)
    return pruned


def backbone_num_features(backbone: nn.Module) -> int:
    """Channel count of `backbone.forward_features` output (timm's `num_features`, else a dry run)."""
    n = getattr(backbone, "num_features", None)
    if isinstance(n, int) and n > 0:
        return n
    first = next(p for p in backbone.parameters() if p.dim() == 4)
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            out = backbone.forward_features(torch.zeros(1, first.shape[1], 64, 64, device=first.device))
    finally:
        backbone.train(was_training)
    return int(out.shape[1])


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a weights file (.safetensors, or a torch pickle loaded with weights_only=True) into a flat dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in _STATE_DICT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


def _strip_prefixes(state: dict[str, Tensor], model_keys: set[str]) -> dict[str, Tensor]:
    """Unwrap keys until they match the backbone's: take the 'backbone.' part of a whole-detector (or
    Lightning) checkpoint, and strip a 'module.'/'model.' prefix shared by every key (DDP, wrappers)."""
    for _ in range(4):
        if not state or any(k in model_keys for k in state):
            return state
        for prefix in ("model.backbone.", "module.backbone.", "backbone."):
            sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if sub:
                state = sub
                break
        else:
            prefix = next((p for p in _STRIP_PREFIXES if all(k.startswith(p) for k in state)), None)
            if prefix is None:
                return state
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ("classifier", "fc", "head", "head.fc", "last_linear")
    if isinstance(names, str):
        names = (names,)
    return tuple(f"{n}." for n in names)


def _first_conv_key(model: nn.Module, model_state: dict[str, Tensor]) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv")
    if isinstance(first, (list, tuple)):
        first = first[0] if first else None
    if first and f"{first}.weight" in model_state:
        return f"{first}.weight"
    return next((k for k, v in model_state.items() if k.endswith("weight") and v.dim() == 4), None)


def adapt_input_channels(weight: Tensor, in_chans: int) -> Tensor:
    """Map a (O, I, kh, kw) conv kernel to `in_chans` input channels.

    The per-output-channel sum over the old inputs is spread evenly over the new ones, so that an input with
    the same value on every channel produces the same activation as before (a grey image through RGB
    weights). For in_chans=1 this is the sum of the RGB kernels; for in_chans=2 each new channel gets half.
    """
    if weight.shape[1] == in_chans:
        return weight
    total = weight.float().sum(dim=1, keepdim=True)
    return (total / in_chans).repeat(1, in_chans, 1, 1).to(weight.dtype)


def load_pretrained(model: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Load local weights into a headless timm backbone, non-strictly, and log what did not match.

    Classifier weights are dropped (the backbone has none), the first convolution is adapted when the
    checkpoint was trained with a different channel count, and any other shape mismatch is skipped with a
    warning rather than failing, so ImageNet weights of the same architecture always load.
    Returns (missing_keys, unexpected_keys).
    """
    model_state = model.state_dict()
    state = _strip_prefixes(read_state_dict(path), set(model_state))
    drop = _classifier_prefixes(model) + tuple(f"{n}." for n in getattr(model, "pruned_modules", ()))
    state = {k: v for k, v in state.items() if not (k.startswith(drop) and k not in model_state)}

    first_key = _first_conv_key(model, model_state)
    if first_key is not None and first_key in state:
        src, dst = state[first_key], model_state[first_key]
        if src.dim() == 4 and src.shape[0] == dst.shape[0] and src.shape[2:] == dst.shape[2:] \
                and src.shape[1] != dst.shape[1]:
            log.info("adapting %s from %d to %d input channels", first_key, src.shape[1], dst.shape[1])
            state[first_key] = adapt_input_channels(src, dst.shape[1])

    skipped = [k for k, v in state.items() if k in model_state and v.shape != model_state[k].shape]
    for k in skipped:
        log.warning("skipping %s: checkpoint shape %s != model shape %s",
                    k, tuple(state[k].shape), tuple(model_state[k].shape))
        del state[k]

    result = model.load_state_dict(state, strict=False)
    missing = list(result.missing_keys) + skipped
    unexpected = list(result.unexpected_keys)
    if missing:
        log.warning("%s: %d missing keys, e.g. %s", path, len(missing), missing[:5])
    if unexpected:
        log.warning("%s: %d unexpected keys, e.g. %s", path, len(unexpected), unexpected[:5])
    log.info("loaded %d tensors from %s", len(state), path)
    return missing, unexpected
