"""MkDocs hooks (mkdocs.yml `hooks:`): the docs link to files of the repository outside docs/ (benchmark
results, source files) with `../PATH`, which works when reading them in the repository. For the site,
those files are copied into it and the links rewritten to the copies; a link to a folder of the
repository keeps its text without the link (a static site has no folder listings)."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parent
# [text](../path) or [text](../path#anchor): the link targets that leave docs/.
LINK = re.compile(r"(!?\[[^\]]*\])\((\.\./[^)\s#]+)(#[^)\s]*)?\)")


def _repo_path(page_src: str, target: str) -> str | None:
    """The repository-relative path of a link that leaves docs/, None when it stays inside."""
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(page_src), target))
    return joined[3:] if joined.startswith("../") else None


def on_files(files, config):
    docs = Path(config["docs_dir"])
    wanted = set()
    for md in docs.rglob("*.md"):
        src = md.relative_to(docs).as_posix()
        for m in LINK.finditer(md.read_text(encoding="utf-8")):
            path = _repo_path(src, m[2])
            if path and (REPO / path).is_file():
                wanted.add(path)
    for path in sorted(wanted):
        files.append(File(path, src_dir=str(REPO), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    src = page.file.src_uri

    def rewrite(m):
        path = _repo_path(src, m[2])
        if path is None or not (REPO / path).exists():
            return m[0]  # left for MkDocs to report
        if (REPO / path).is_dir():
            return m[1][1:-1] if not m[1].startswith("!") else m[0]
        return f"{m[1]}({posixpath.relpath(path, posixpath.dirname(src) or '.')}{m[3] or ''})"

    return LINK.sub(rewrite, markdown)
