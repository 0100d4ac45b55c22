"""The course as a static site (Jupyter Book), built from notebooks that already ran.

    python tools/site.py [--executed build/executed] [--out build/site]

`make test` runs every notebook under nbval and, with ``CLIPEDU_SAVE_EXECUTED=build/executed``
(notebooks/conftest.py), writes each one there with its outputs; this tool renders those, never
executing a notebook itself. It assembles the book's sources in ``build/site-src/``: a home page
(the README's opening and the notebook table), the notebooks, the course map (the README's package
table), the syllabus (a README section of that name, when there is one) and the glossary
(``notebooks/GLOSSARY.md``, when there is one), with ``_config.yml`` and ``_toc.yml`` generated
from ``course.toml``: the repository button, the Colab launch buttons and every link to a file
outside the site point at the repository named there. Then Jupyter Book writes HTML (with its
search page) to ``build/site/``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: tools/ is not a package on sys.path then
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import course  # noqa: E402

ROOT = course.ROOT
_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


def readme_section(readme: str, pattern: str) -> tuple[str, str] | None:
    """(heading, body) of the first ``## `` or ``### `` section of ``readme`` whose heading matches
    ``pattern``; the body runs to the next heading of the same level or above."""
    headings = list(re.finditer(r"^(#{2,3}) (.*)$", readme, flags=re.M))
    for i, m in enumerate(headings):
        if re.search(pattern, m.group(2), flags=re.I):
            level = len(m.group(1))
            end = next((h.start() for h in headings[i + 1:] if len(h.group(1)) <= level), len(readme))
            return m.group(2).strip(), readme[m.end():end].strip()
    return None


def rewrite_links(text: str, here: str, pages: set[str], repository: str, branch: str) -> str:
    """Markdown links of a page at ``here`` (its folder in the checkout, "" for the root): a link to
    another page of the site stays relative, a link to any other file of the checkout points at
    it on GitHub, external links and anchors are left alone."""
    def fix(m: re.Match) -> str:
        target = m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target, flags=re.I):
            return m.group(0)
        path, _, anchor = target.partition("#")
        resolved = (Path(here) / path).as_posix() if here else path
        resolved = _normalise(resolved)
        if resolved in pages:
            return m.group(0)
        kind = "tree" if path.endswith("/") else "blob"
        url = f"{course.repository_url(repository)}/{kind}/{branch}/{resolved}" + (f"#{anchor}" if anchor else "")
        return f"{m.group(1)}{url}{m.group(3)}"

    return _LINK.sub(fix, text)


def _normalise(path: str) -> str:
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == ".." and parts:
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def config_yml(repository: str, branch: str) -> str:
    # JSON is YAML: the values need no quoting rules of their own.
    config = {
        "title": "clipedu: build CLIP from scratch",
        "author": "the clipedu authors",
        "copyright": "",
        "only_build_toc_files": True,
        "exclude_patterns": ["_build", "**.ipynb_checkpoints"],
        "execute": {"execute_notebooks": "off"},  # the outputs are nbval's (build/executed)
        "repository": {"url": course.repository_url(repository), "branch": branch, "path_to_book": ""},
        "html": {"use_repository_button": True, "use_issues_button": True, "home_page_in_navbar": True},
        "launch_buttons": {"colab_url": "https://colab.research.google.com", "notebook_interface": "classic"},
        "sphinx": {"config": {
            "myst_heading_anchors": 3,
            "html_show_copyright": False,
            "html_baseurl": course.site_url(repository),
            # the notebooks' own links to files of the checkout are rewritten to GitHub here,
            # so a warning about a missing reference is a real one
            "suppress_warnings": ["myst.header", "mystnb.unknown_mime_type"],
        }},
    }
    return json.dumps(config, indent=1) + "\n"


def toc_yml(notebooks: list[str], extras: list[str]) -> str:
    toc = {"format": "jb-book", "root": "index",
           "parts": [{"caption": "Notebooks", "chapters": [{"file": f"notebooks/{n}"} for n in notebooks]}]}
    if extras:
        toc["parts"].append({"caption": "Reference", "chapters": [{"file": e} for e in extras]})
    return json.dumps(toc, indent=1) + "\n"


def home_page(readme: str, notebooks: list[Path], extras: dict[str, str], repository: str, branch: str) -> str:
    opening = readme.split("\n## ", 1)[0].strip()
    rows = ["| # | notebook | on Colab |", "| --- | --- | --- |"]
    for p in notebooks:
        title = course.title_of(course.load(p))
        student = f"[student]({course.colab_url(p.name, repository, branch, course.STUDENT)})"
        solutions = f"[solutions]({course.colab_url(p.name, repository, branch)})"
        rows.append(f"| {p.name[:2]} | [{title}](notebooks/{p.name}) | {student} · {solutions} |")
    more = "".join(f"- [{title}]({page}.md)\n" for page, title in extras.items())
    return (f"{opening}\n\nEach page below is a notebook as it ran in fast mode, outputs included; open it on "
            f"Colab to run it yourself (**student**: the exercises to fill in; **solutions**: the worked answers). "
            f"The source is at <{course.repository_url(repository)}>.\n\n## The notebooks\n\n" + "\n".join(rows)
            + ("\n\n## Reference\n\n" + more if more else "\n"))


def assemble(executed: Path, src: Path, root: Path = ROOT) -> list[str]:
    """Write the book's sources to ``src``; returns the notebook names rendered."""
    repository, branch = course.read_settings(root)
    notebooks = course.notebook_paths(root / "notebooks")
    missing = [p.name for p in notebooks if not (executed / p.name).exists()]
    if missing:
        raise SystemExit(f"{executed} lacks the executed {', '.join(missing)}: run `make test-notebooks` "
                         "(or `make test`), which writes them there, then build the site")
    if src.exists():
        shutil.rmtree(src)
    (src / "notebooks").mkdir(parents=True)
    readme = (root / "README.md").read_text(encoding="utf-8")
    glossary = root / "notebooks" / "GLOSSARY.md"

    pages = {f"notebooks/{p.name}" for p in notebooks} | {"README.md"}
    extras: dict[str, str] = {}  # page -> title
    texts: dict[str, str] = {}
    found = readme_section(readme, r"\bpackage\b|\bmap\b")
    if found:
        extras["map"] = "The course map: one module a concept"
        texts["map"] = f"# {extras['map']}\n\n{found[1]}\n"
    found = readme_section(readme, r"syllabus")
    if found:
        extras["syllabus"] = found[0]
        texts["syllabus"] = f"# {found[0]}\n\n{found[1]}\n"
    if glossary.exists():
        extras["notebooks/GLOSSARY"] = "Glossary"
        pages.add("notebooks/GLOSSARY.md")
    for page, text in texts.items():
        (src / f"{page}.md").write_text(rewrite_links(text, "", pages, repository, branch), encoding="utf-8")
    if glossary.exists():
        text = rewrite_links(glossary.read_text(encoding="utf-8"), "notebooks", pages, repository, branch)
        (src / "notebooks" / "GLOSSARY.md").write_text(text, encoding="utf-8")
    home = home_page(readme, notebooks, extras, repository, branch)
    (src / "index.md").write_text(rewrite_links(home, "", pages | {f"{e}.md" for e in extras}, repository, branch),
                                  encoding="utf-8")

    for p in notebooks:
        nb = course.load(executed / p.name)
        for cell in nb["cells"]:
            if cell["cell_type"] == "markdown":
                course.set_source(cell, rewrite_links(course.source(cell), "notebooks", pages, repository, branch))
        nb.get("metadata", {}).pop("widgets", None)
        course.save(nb, src / "notebooks" / p.name)
    (src / "_config.yml").write_text(config_yml(repository, branch), encoding="utf-8")
    (src / "_toc.yml").write_text(toc_yml([p.stem for p in notebooks], list(extras)), encoding="utf-8")
    return [p.name for p in notebooks]


def jupyter_book() -> list[str]:
    script = Path(sys.executable).parent / "jupyter-book"
    if script.exists():
        return [str(script)]
    found = shutil.which("jupyter-book")
    if found:
        return [found]
    raise SystemExit("jupyter-book is not installed: pip install -e \".[site]\" (make site does it)")


def build(executed: Path, out: Path, src: Path, root: Path = ROOT) -> float:
    """Assemble and render; returns the seconds Jupyter Book took."""
    assemble(executed, src, root)
    work = src.parent / "site-build"
    if work.exists():
        shutil.rmtree(work)
    start = time.perf_counter()
    subprocess.run([*jupyter_book(), "build", str(src), "--path-output", str(work), "--builder", "html", "--all"],
                   check=True)
    seconds = time.perf_counter() - start
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(work / "_build" / "html", out)
    (out / ".nojekyll").write_text("")  # GitHub Pages serves _static/ as it is
    return seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python tools/site.py", description=__doc__.split("\n")[0])
    ap.add_argument("--executed", type=Path, default=ROOT / "build" / "executed")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "site")
    ap.add_argument("--src", type=Path, default=ROOT / "build" / "site-src")
    args = ap.parse_args(argv)
    seconds = build(args.executed, args.out, args.src)
    print(f"site in {args.out} ({seconds:.0f} s of Jupyter Book); open {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
