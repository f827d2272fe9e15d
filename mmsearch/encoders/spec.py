"""Which model: what the user named (``--model``/``--pretrained``) resolved into a ``ModelSpec``
whose identity is stored with an index, without loading anything heavy.

Names go through open_clip's own resolution (``parse_model_name`` for ``hf-hub:`` and
``local-dir:``, ``get_model_config`` for architectures), JSON configs are registered with
``add_model_config`` once per file, and a folder written by ``mmsearch train`` is understood.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
NO_WEIGHTS = ("", "none", "random")
RANDOM_INIT_SEED = 0
# Names of the files `mmsearch train` writes into its output folder.
TRAINED_CONFIG = "config.json"
TRAINED_CHECKPOINT = "checkpoint.pt"
TRAINED_LAST = "last.pt"

_registered_configs: set[str] = set()


def register_config(path: Path) -> None:
    """Make a JSON architecture known to open_clip (once per file and process)."""
    key = str(Path(path).resolve())
    if key not in _registered_configs:
        import open_clip

        open_clip.add_model_config(path)
        _registered_configs.add(key)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class ModelSpec:
    """A model as the user named it, resolved to absolute paths where it names files.

    ``name`` is an open_clip architecture (``ViT-B-32``), a path to an open_clip JSON config,
    ``hf-hub:org/repo``, ``local-dir:/path`` or a folder written by ``mmsearch train``.
    ``pretrained`` is a tag, a checkpoint file, or None for random weights.
    """

    name: str
    pretrained: str | None

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def resolve(cls, name: str | None = None, pretrained: str | None = None, known: dict | None = None,
                defaults: tuple[str | None, str | None] = (None, None),
                exported: Callable[[ModelSpec], bool] | None = None) -> ModelSpec:
        """Validate and normalise a user's ``--model``/``--pretrained`` without loading anything.

        With no name, ``defaults`` (``MMSEARCH_MODEL``/``MMSEARCH_PRETRAINED``, see
        ``Settings``; either may stand alone) or the default model apply.
        ``known``: the model an existing index records; an open_clip name and weights naming
        exactly that were checked when the index was made, so open_clip is not imported again
        (2-4 s) to check them. ``exported(spec)``: True when this machine already exported that
        exact model (architecture name and weights tag), which validated the name then: open_clip
        (and so torch) is not imported to validate it again.
        """
        if (known and name and pretrained is not None and name == known.get("name")
                and _weights(pretrained) == known.get("pretrained") and not name.endswith(".json")
                and not name.startswith(("hf-hub:", "local-dir:")) and not Path(name).expanduser().exists()):
            return cls(name, _weights(pretrained))
        if not name:
            # The environment names the model for new indexes; either variable may stand alone
            # (MMSEARCH_PRETRAINED=none gives the default architecture with random weights).
            name = defaults[0] or None
            if pretrained is None and defaults[1]:
                pretrained = defaults[1]
        if not name:
            return cls(DEFAULT_MODEL, DEFAULT_PRETRAINED if pretrained is None else _weights(pretrained))
        path = Path(name).expanduser()
        if path.is_dir():
            config, checkpoint = path / TRAINED_CONFIG, path / TRAINED_CHECKPOINT
            if (path / "open_clip_config.json").is_file():
                return cls(f"local-dir:{path.resolve()}", None)
            if config.is_file():
                if pretrained is None:
                    # The kept weights; an interrupted run that never finished an epoch has only
                    # its resume state, which loads the same way.
                    last = path / TRAINED_LAST
                    pretrained = str(checkpoint) if checkpoint.is_file() else (str(last) if last.is_file() else None)
                return cls(str(config.resolve()), _weights(pretrained))
            raise ModelLoadError(
                f"{path} is a folder but holds neither {TRAINED_CONFIG} nor open_clip_config.json"
            )
        if name.endswith(".json"):
            if not path.is_file():
                raise ModelLoadError(f"model config file not found: {path}")
            read_config(path)  # fail early on a malformed config
            return cls(str(path.resolve()), _weights(pretrained))
        if (not path.exists() and not name.startswith(("hf-hub:", "local-dir:"))
                and ("/" in name or os.sep in name or name.startswith(("~", ".")))):
            # A path (open_clip names never hold a slash) that names nothing here.
            raise ModelLoadError(f"no such folder or file: {path} (--model takes an open_clip name, a JSON config, "
                                 f"hf-hub:ORG/REPO, local-dir:PATH or a `mmsearch train` folder)")
        if exported is not None and ":" not in name and (pretrained is not None or name == DEFAULT_MODEL):
            candidate = cls(name, DEFAULT_PRETRAINED if pretrained is None else _weights(pretrained))
            if exported(candidate):
                return candidate
        import open_clip
        from open_clip.factory import parse_model_name

        try:
            schema, identifier = parse_model_name(name)
        except ValueError as exc:
            raise ModelLoadError(f"model {name!r}: {exc}") from exc
        if schema == "local-dir":
            folder = Path(identifier).expanduser()
            if not folder.is_dir():
                raise ModelLoadError(f"model folder not found: {folder}")
            return cls(f"local-dir:{folder.resolve()}", None)
        if schema == "hf-hub":
            return cls(name, None)

        if open_clip.get_model_config(name) is None:
            close = difflib.get_close_matches(name, open_clip.list_models(), n=5)
            hint = f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()"
            raise ModelLoadError(f"unknown open_clip model {name!r}{hint}")
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained is None:
            # An explicit architecture with no weights named gets its first published weights,
            # not a silently useless random model.
            pretrained = DEFAULT_PRETRAINED if name == DEFAULT_MODEL else (tags[0] if tags else "none")
        weights = _weights(pretrained)
        if weights is not None and not Path(weights).is_file() and weights not in tags:
            raise ModelLoadError(
                f"pretrained {pretrained!r} is neither a checkpoint file nor a tag of {name}; "
                f"tags: {', '.join(tags) or 'none'}"
            )
        return cls(name, weights)

    @classmethod
    def from_manifest(cls, data: dict) -> ModelSpec:
        return cls(data["name"], data.get("pretrained"))

    # -- description -------------------------------------------------------------------------
    @property
    def config_path(self) -> Path | None:
        return Path(self.name) if self.name.endswith(".json") else None

    @property
    def arch(self) -> str:
        """The open_clip model name passed to ``create_model`` (config files register their stem)."""
        return self.config_path.stem if self.config_path else self.name

    @property
    def display(self) -> str:
        weights = self.pretrained or ("(bundled)" if self.name.startswith(("hf-hub:", "local-dir:")) else "random init")
        return f"{self.name} [{weights}]"

    def identity(self, known: dict | None = None) -> dict:
        """What the manifest records. ``fingerprint`` changes iff the embedding space may change.

        Hashing a checkpoint file is skipped when ``known`` (the manifest's previous identity)
        recorded the same path, size and mtime.
        """
        if self.config_path:
            arch_sig = _sha256_json(read_config(self.config_path))
        elif self.name.startswith("local-dir:"):
            folder = Path(self.name[len("local-dir:"):])
            arch_sig = _sha256_file(folder / "open_clip_config.json") if (folder / "open_clip_config.json").is_file() else self.name
        else:
            arch_sig = self.name
        weights: dict[str, Any]
        if self.pretrained is None:
            weights = {"kind": "none" if not self.name.startswith(("hf-hub:", "local-dir:")) else "bundled"}
            if self.name.startswith("local-dir:"):
                weights.update(_file_identity(_local_dir_checkpoint(self.name), known))
        elif Path(self.pretrained).is_file():
            weights = {"kind": "file", **_file_identity(Path(self.pretrained), known)}
        else:
            weights = {"kind": "tag", "id": self.pretrained}
        fingerprint = _sha256_json({"arch": arch_sig, "weights": weights.get("sha256", weights.get("id", weights["kind"]))})
        return {"name": self.name, "pretrained": self.pretrained, "weights": weights, "fingerprint": fingerprint}


def _weights(pretrained: str | None) -> str | None:
    if pretrained is None or pretrained.strip().lower() in NO_WEIGHTS:
        return None
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path.resolve())
    if os.path.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise ModelLoadError(f"checkpoint file not found: {pretrained}")
    return pretrained


def read_config(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read model config {path}: {exc}") from exc
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in data]
    if missing:
        raise ModelLoadError(f"model config {path} lacks {', '.join(missing)} (not an open_clip config)")
    return data


def _local_dir_checkpoint(name: str) -> Path | None:
    folder = Path(name[len("local-dir:"):])
    for pattern in ("*.safetensors", "*.bin", "*.pth", "*.pt"):
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    return None


def _file_identity(path: Path | None, known: dict | None) -> dict:
    if path is None:
        return {}
    stat = path.stat()
    record = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    prev = (known or {}).get("weights", {})
    if all(prev.get(key) == value for key, value in record.items()) and prev.get("sha256"):
        record["sha256"] = prev["sha256"]
    else:
        key = (record["path"], record["size"], record["mtime_ns"])
        if key not in _hashed:  # once per file version and process: a checkpoint is hundreds of MB
            _hashed[key] = _sha256_file(path)
        record["sha256"] = _hashed[key]
    return record


_hashed: dict[tuple[str, int, int], str] = {}


def random_weights_note(spec: ModelSpec) -> str | None:
    """A warning for an index created with random weights (None for real weights)."""
    if spec.pretrained is not None or spec.name.startswith(("hf-hub:", "local-dir:")):
        return None
    return (f"{spec.display} has random weights (--pretrained none): the index works, but its "
            f"rankings mean nothing; name real weights to search by meaning")


OFFLINE_HINT = (
    "Without network access: point at local weights (--pretrained /path/to/checkpoint.pt, "
    "--model local-dir:/path/to/folder, or --model config.json --pretrained checkpoint.pt); set "
    "HF_HUB_OFFLINE=1 to use weights already in the Hugging Face cache without asking the network; "
    "or try mmsearch without weights with --pretrained none (random weights, meaningless ranking)"
)
# Seconds to wait for the Hugging Face hub before concluding it cannot be reached. Its own
# client retries for about a minute, printing a warning per try.
HUB_PROBE_TIMEOUT = 5.0


def check_weights_reachable(spec: ModelSpec) -> None:
    """Fail at once, with the ways forward, when a model's weights must be downloaded and the
    Hugging Face hub cannot be reached (or ``HF_HUB_OFFLINE`` is set): no minute of retries."""
    source = _hub_source(spec)
    if source is None:
        return  # local files, random weights, or already cached
    repo, files = source
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ModelLoadError(f"weights for {spec.display} ({repo}) are not in the Hugging Face cache and "
                             f"HF_HUB_OFFLINE is set. {OFFLINE_HINT}")
    import httpx
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    try:
        httpx.head(endpoint, timeout=HUB_PROBE_TIMEOUT, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise ModelLoadError(
            f"cannot download weights for {spec.display}: {endpoint} cannot be reached "
            f"({_first_line(exc) or type(exc).__name__}). {OFFLINE_HINT}"
        ) from exc


def _hub_source(spec: ModelSpec) -> tuple[str, list[str]] | None:
    """(hub repo, candidate files) of weights that would be downloaded now, or None."""
    from huggingface_hub import try_to_load_from_cache

    if spec.name.startswith("hf-hub:"):
        repo, files = spec.name[len("hf-hub:"):], ["open_clip_config.json"]
    elif spec.pretrained and not Path(spec.pretrained).is_file() and not spec.config_path:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained) or {}
        if cfg.get("file") or not cfg.get("hf_hub"):
            return None  # a local file, or a plain URL download (rare): leave it to open_clip
        # 'org/repo/file.bin', or 'org/repo/' for open_clip's default file name
        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        files = [filename, filename.replace("open_clip_pytorch_model", "open_clip_model").replace(".bin", ".safetensors")]
    else:
        return None
    for name in files:
        try:
            if isinstance(try_to_load_from_cache(repo, name), str):
                return None
        except Exception:  # noqa: BLE001 - a malformed repo id: let open_clip report it
            return None
    return repo, files


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def explain_load_failure(spec: ModelSpec, exc: Exception) -> str:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if spec.pretrained and not Path(spec.pretrained).is_file() or spec.name.startswith("hf-hub:"):
        return (
            f"cannot load weights for {spec.display}: {reason}. They are downloaded from the "
            f"Hugging Face hub on first use and cached. {OFFLINE_HINT}"
        )
    return f"cannot load model {spec.display}: {reason}"
