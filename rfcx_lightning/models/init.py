"""``model.init_from``: start a detector's backbone from an earlier checkpoint, strictly.

``model.pretrained_path`` (``backbones.load_pretrained``) is deliberately lenient: ImageNet weights of the
same architecture must load even though the classifier and first convolution differ. ``init_from`` is the
opposite case: the weights come from this library (``stage=pretrain``'s ``backbone.pt`` or the Lightning
checkpoint of any stage), so every key and shape must match. A silent partial load would train from
scratch while the user believes the run was pretrained, so anything that does not fit is an error naming
the file and the offending keys.

Files are read with ``torch.load(..., weights_only=True)``: a checkpoint is data, and unpickling arbitrary
objects from a path on the command line would execute code.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

# ``format`` tag of the file ``stage=pretrain`` writes (see save_backbone).
BACKBONE_FORMAT = "rfcx_lightning.backbone/1"
# Where a backbone's keys sit in the checkpoints this library writes: a Lightning checkpoint of a
# StageModule (``model.backbone.``), a SpeciesDetector state dict (``backbone.``), and the same under DDP.
_BACKBONE_PREFIXES = ("model.backbone.", "module.model.backbone.", "backbone.", "module.backbone.")
# Front-end settings that change what the backbone sees; weights learned on another input still load, but
# the user is told (a different n_mels or sample rate is usually a mistake, not a choice).
_FRONTEND_FIELDS = ("sample_rate", "n_fft", "hop_length", "n_mels", "fmin", "fmax", "normalize",
                    "freq_position_channel")


def backbone_name(backbone: nn.Module) -> str | None:
    """The timm architecture name of a backbone built by ``create_backbone`` (None if timm did not set it)."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    return cfg.get("architecture")


def frontend_summary(frontend: nn.Module) -> dict[str, Any]:
    """The front-end settings a backbone's weights depend on, as plain values (stored in backbone.pt)."""
    return {field: getattr(frontend, field) for field in _FRONTEND_FIELDS if hasattr(frontend, field)}


def save_backbone(detector: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``detector``'s backbone weights and the config needed to check compatibility, atomically.

    The file holds only tensors, strings, numbers and dicts, so it loads with ``weights_only=True``;
    ``state_dict`` is also the key ``backbones.read_state_dict`` unwraps, so the same file works as
    ``model.pretrained_path`` (lenient) as well as ``model.init_from`` (strict).
    """
    from ..workspace import atomic_path

    payload = {
        "format": BACKBONE_FORMAT,
        "state_dict": {k: v.detach().cpu().clone() for k, v in detector.backbone.state_dict().items()},
        "config": {"backbone": backbone_name(detector.backbone),
                   "in_chans": int(detector.frontend.out_channels),
                   "frontend": frontend_summary(detector.frontend),
                   **(extra or {})},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_init_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """(backbone state dict, stored config or None) from a backbone.pt, a Lightning checkpoint or a state dict."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.init_from: {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw: Any = load_file(str(path), device="cpu")
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
            raise ValueError(f"model.init_from: {path} cannot be read as a weights-only checkpoint "
                             f"(truncated, not a torch file, or it pickles Python objects): {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"model.init_from: {path} holds a {type(raw).__name__}, not a checkpoint dict")
    if raw.get("format") == BACKBONE_FORMAT:
        return dict(raw["state_dict"]), dict(raw.get("config") or {})
    state = raw["state_dict"] if isinstance(raw.get("state_dict"), dict) else raw
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    for prefix in _BACKBONE_PREFIXES:
        sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if sub:
            return sub, None
    raise ValueError(f"model.init_from: {path} has no backbone weights: expected a backbone.pt of "
                     f"stage=pretrain or keys starting with one of {list(_BACKBONE_PREFIXES)}; "
                     f"found keys such as {sorted(tensors)[:5]}")


def _listed(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def apply_init_from(detector: nn.Module, path: str | Path) -> dict[str, Any] | None:
    """Load the backbone weights in ``path`` into ``detector.backbone``; every key and shape must match.

    Accepts ``W/<pretrain>/backbone.pt`` and the ``last.ckpt``/``best.ckpt`` of any stage. Head and
    front-end are left as built: the head's classes may differ between stages, and the front-end has no
    learned weights. Returns the config stored with the weights (None for Lightning checkpoints).
    """
    state, config = read_init_checkpoint(path)
    target = detector.backbone.state_dict()
    expected, stored = backbone_name(detector.backbone), (config or {}).get("backbone")
    if stored and expected and stored != expected:
        raise ValueError(f"model.init_from: {path} holds a {stored!r} backbone, but model.backbone is "
                         f"{expected!r}; set model.backbone={stored} or pretrain a {expected}")
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(target[k].shape)}"
                  for k in sorted(set(state) & set(target)) if state[k].shape != target[k].shape]
    if missing or unexpected or mismatched:
        problems = []
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches ({_listed(mismatched)})")
        if missing:
            problems.append(f"{len(missing)} backbone keys missing from the file ({_listed(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} keys the backbone does not have ({_listed(unexpected)})")
        raise ValueError(f"model.init_from: {path} does not fit backbone {expected!r}: " + "; ".join(problems)
                         + ". Was it trained with another model.backbone, backbone_kwargs or "
                           "model.frontend.freq_position_channel?")
    if config and config.get("frontend"):
        here = frontend_summary(detector.frontend)
        differ = {k: (v, here.get(k)) for k, v in config["frontend"].items() if k in here and here[k] != v}
        if differ:
            log.warning("model.init_from: %s was trained on another front-end (file vs now: %s); the "
                        "weights load, but the backbone will see different inputs", path, differ)
    detector.backbone.load_state_dict(state, strict=True)
    log.info("model.init_from: loaded %d backbone tensors from %s", len(state), path)
    return config
