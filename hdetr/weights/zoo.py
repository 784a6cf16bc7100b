"""Official detectors by name: download, check, convert once, and cache (``hdetr models`` lists them).

``model_folder(name)`` gives the converted model folder of a zoo entry (``hdetr.model_zoo.ZOO``), doing what
is still missing, in order:

1. download the official ``.pth`` to ``HOME/NAME.pth`` (progress bar, resumed when interrupted, placed
   atomically; ``download.py``) and record its sha256 in ``HOME/NAME.json``. A file put at
   ``HOME/NAME.pth`` by hand (downloaded elsewhere) is used as it is and recorded the same way;
2. compare the file with the official key list of its config (names and shapes) — before converting;
3. convert it once into the model folder ``HOME/NAME/`` (written beside it, then renamed into place),
   and record the sha256 of its weights.

Later uses compare the cached files with the recorded sha256 values. HOME is ``$HDETR_HOME``, else
``$XDG_CACHE_HOME/hdetr``, else ``~/.cache/hdetr``. ``$HDETR_ZOO_URL`` replaces the official release URL
(a mirror, or the tests' local server); the file names stay the official ones. The table, the cache's
place and the names are ``hdetr.model_zoo`` (torch-free).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from ..errors import UserError
from ..files import atomic_write
from ..model_zoo import ZooEntry, get_entry, record_file, zoo_home, zoo_url
from .download import OfflineError, download, sha256_of
from ..safe_load import CheckpointError, safe_torch_load
from .model_folder import MODEL_FILE, save_model
from .official import coco_class_names, load_official_checkpoint

KEY_LISTS = Path(__file__).parent / "official_keys"


def expected_keys(entry: ZooEntry) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the official state dict of ``entry``'s config.

    The key lists are the official models' (tests/fixtures/checkpoint_keys), one per backbone, without
    ``query_embed.weight``: the official model has that embedding only with mixed query selection (a
    trick), with one row per query, one-to-one and one-to-many together.
    """
    doc = json.loads(gzip.decompress((KEY_LISTS / f"{entry.backbone}.json.gz").read_bytes()))
    keys = {name: tuple(shape) for name, shape in doc["keys"]}
    if entry.tricks:
        keys["query_embed.weight"] = (entry.queries + entry.one2many, 256)
    return keys


def check_structure(path: Path, entry: ZooEntry, state: dict) -> None:
    """Refuse a file whose tensors are not those of ``entry``'s official model (names and shapes)."""
    want = expected_keys(entry)
    got = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    wrong = [k for k in want if k in got and got[k] != want[k]]
    if not (missing or extra or wrong):
        return
    first = (f"tensor {wrong[0]} has shape {list(got[wrong[0]])}, the official model's {list(want[wrong[0]])}"
             if wrong else f"tensor {missing[0]} is missing" if missing else f"it has a tensor {extra[0]} the "
             f"official model does not")
    raise UserError(f"{path}: not the official {entry.name} checkpoint: {first} ({len(missing)} missing, "
                    f"{len(extra)} unexpected, {len(wrong)} of the wrong shape of {len(want)} tensors)")


def _read_record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: damaged model zoo record ({e}); delete it to check the files again") from None


def _write_record(path: Path, record: dict) -> None:
    text = json.dumps(record, indent=1) + "\n"
    atomic_write(path, lambda p: Path(p).write_text(text))


@contextmanager
def _locked(home: Path, name: str):
    """One process at a time downloads or converts a given entry (two `hdetr predict NAME` started together)."""
    home.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(home / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def offline_message(entry: ZooEntry, home: Path, reason: str) -> str:
    return (f"{entry.name}: cannot download {zoo_url(entry)} ({reason}); without internet, download that file "
            f"elsewhere and put it at {home / (entry.name + '.pth')}, or convert it with `hdetr convert FILE.pth "
            f"OUT` and use OUT")


def _fetch(entry: ZooEntry, home: Path, record: dict, progress: bool | None) -> Path:
    """The official file on disk, downloaded if needed, its sha256 recorded or compared."""
    pth = home / f"{entry.name}.pth"
    if pth.exists():
        digest = sha256_of(pth)
        if record.get("sha256") and record["sha256"] != digest:
            raise UserError(f"{pth}: its sha256 ({digest[:12]}...) differs from the one recorded when it was "
                            f"first used ({record['sha256'][:12]}...): the file changed; delete it to download "
                            "it again")
        if not record.get("sha256"):
            record.update(sha256=digest, size=pth.stat().st_size, url=None, downloaded=False)
        return pth
    url = zoo_url(entry)

    def announce(start: int, total: int | None):
        size = f" ({total / 2**20:.0f} MiB)" if total else ""
        what = f"resuming at {start / 2**20:.0f} MiB the download of" if start else "downloading"
        print(f"{entry.name}: {what} {url}{size} -> {pth}", flush=True)

    try:
        download(url, pth, progress=progress, on_answer=announce)
    except OfflineError as e:
        raise UserError(offline_message(entry, home, str(e).split(": ", 1)[-1])) from None
    record.update(sha256=sha256_of(pth), size=pth.stat().st_size, url=url, downloaded=True)
    return pth


def _convert(entry: ZooEntry, pth: Path, folder: Path, record: dict) -> None:
    """Check the official file's structure, then convert it into ``folder`` (written beside it, renamed)."""
    from ..models import WeightsMismatchError, build_model_with_weights

    def drop_download(message: str):
        # A file hdetr downloaded is removed so the next call downloads it anew; one the user put there is kept.
        if record.get("downloaded"):
            pth.unlink(missing_ok=True)
            record.clear()
            message += "; the downloaded file was deleted, run again to download it anew"
        return UserError(message)

    try:
        raw = safe_torch_load(pth)
    except CheckpointError as e:
        raise drop_download(f"{e} (an incomplete or damaged download?)") from None
    model_state = raw.get("model")
    if not isinstance(model_state, dict):
        raise drop_download(f"{pth}: not an official H-Deformable-DETR checkpoint (no 'model' state dict)")
    try:
        check_structure(pth, entry, model_state)
    except UserError as e:
        raise drop_download(str(e)) from None
    del raw, model_state
    try:
        cfg, state = load_official_checkpoint(pth)
        cfg = replace(cfg, model=replace(cfg.model, pretrained_backbone=False, topk=entry.topk))
        model = build_model_with_weights(cfg, state, pth)
    except (CheckpointError, WeightsMismatchError) as e:
        raise UserError(str(e)) from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=folder.parent))
    try:
        save_model(tmp, cfg, model.state_dict(), class_names=coco_class_names(cfg.model.num_classes),
                   extra_meta={"zoo_name": entry.name, "source_file": entry.file})
        if folder.exists():  # a folder without its weights, from a conversion that died; hdetr wrote it
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    record["converted_sha256"] = sha256_of(folder / MODEL_FILE)


def model_folder(name: str, progress: bool | None = None) -> Path:
    """The converted model folder of the zoo entry ``name``: downloaded, checked and converted when needed."""
    entry = get_entry(name)
    home = zoo_home()
    folder, record_path = home / name, record_file(name)
    with _locked(home, name):
        record = _read_record(record_path)
        weights = folder / MODEL_FILE
        if weights.exists() and record.get("converted_sha256"):
            digest = sha256_of(weights)
            if digest != record["converted_sha256"]:
                raise UserError(f"{weights}: its sha256 differs from the one recorded when hdetr converted it: the "
                                f"file changed; delete {folder} to convert the model again")
            return folder
        pth = _fetch(entry, home, record, progress)
        _write_record(record_path, {"name": name, **record})
        try:
            _convert(entry, pth, folder, record)
        finally:
            _write_record(record_path, {"name": name, **record})
        print(f"{name}: converted {pth.name} -> {folder}", flush=True)
    return folder
