"""The documentation: the site builds strictly, its links resolve, it renders (a page and the search) in
headless Chromium, the reference pages follow the code, every measured number in README.md and docs/ is
found in a file under benchmarks/results, and the adding-a-method recipe runs as written."""

from __future__ import annotations

import argparse
import html.parser
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from conftest import REPO, cli_env
from headless import CHROMIUM, Browser, serve

DOCS = REPO / "docs"
RESULTS = REPO / "benchmarks" / "results"


def load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "scripts" / "docs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = load_hooks()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=REPO,
                          env={**cli_env(), "NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def nav_pages() -> list[str]:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8").replace("!!python", "#"))

    def walk(items) -> list[str]:
        out = []
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            out += walk(value) if isinstance(value, list) else [value]
        return out

    return walk(config["nav"])


def built_html(site: Path, page: str) -> Path:
    return site / (page[: -len(".md")] + ".html")  # use_directory_urls: false


# ----------------------------------------------------------------------------- the build and its links


def test_every_nav_page_is_built_and_every_docs_page_is_in_the_nav(site):
    pages = nav_pages()
    for page in pages:
        assert built_html(site, page).is_file(), page
    written = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert written <= set(pages), f"pages missing from the nav in mkdocs.yml: {sorted(written - set(pages))}"
    assert set(hooks.PAGES) <= set(pages) and not (set(hooks.PAGES) & written), "generated pages live only in the build"


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        for key in ("href", "src"):
            if attrs.get(key) and not (tag == "link" and attrs.get("rel") == "canonical"):
                self.links.append(attrs[key])


def parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_internal_links_and_anchors_resolve(site):
    parsed = {p: parse(p) for p in site.rglob("*.html")}
    broken = []
    for page, links in parsed.items():
        for link in links.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("mailto:", "data:", "javascript:")):
                continue
            if not parts.path:
                target = page
            elif parts.path.startswith("/"):  # 404.html links from the site's root
                target = (site / unquote(parts.path).lstrip("/")).resolve()
            else:
                target = (page.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{page.relative_to(site)}: {link}")
            elif parts.fragment and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{page.relative_to(site)}: {link} (no such anchor)")
    assert not broken, "\n".join(broken[:30])


def test_readme_links_point_at_files_in_the_repository():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [t for t in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
               if not urlsplit(t).scheme and not (REPO / t).exists()]
    assert not missing, missing


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed (Debian package 'chromium')")
def test_front_page_and_search_render_in_headless_chromium(site, tmp_path):
    browser = Browser(tmp_path / "chromium-profile")
    try:
        with serve(site) as base:
            page = browser.wait_for(base, "document.querySelector('article h1') && "
                                    "[document.title, document.querySelector('article h1').textContent, "
                                    "document.querySelectorAll('.md-nav__link').length]")
            assert page and page[0] == "longtail" and page[1].startswith("Getting started")  # the home page is titled by the site
            assert page[2] > 20  # the navigation rendered
            # ?q= opens the search dialog with the query; results come from the search worker and its index
            found = browser.wait_for(base + "?q=logit+adjustment", "[...document.querySelectorAll("
                                     "'.md-search-result__item')].map(e => e.textContent)")
            assert found and any("Methods" in text for text in found), found
            # the generated pages are in the search index too
            generated = browser.wait_for(base + "methods.html?q=RandomGrayscale", "[...document.querySelectorAll("
                                         "'.md-search-result__item')].map(e => e.textContent)")
            assert generated and any("Config keys" in text for text in generated), generated
    finally:
        browser.close()


# ----------------------------------------------------------------------------- reference pages from the code


def test_cli_reference_has_every_command_and_option(site):
    from longtail.cli import build_parser

    page = hooks.cli_page()
    built = built_html(site, "reference/cli.md").read_text(encoding="utf-8")
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert len(commands.choices) >= 9
    for name, sub in [("", parser), *commands.choices.items()]:
        if name:
            assert f"## {name}\n" in page and f'id="{name}"' in built
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in page and flag in built, (name, flag)
            if action.help and not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                assert hooks._cell(action.help) in page, (name, action.help)


def test_cli_reference_follows_a_new_option(monkeypatch):
    import longtail.cli as cli

    original = cli.build_parser

    def with_new_option():
        parser = original()
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        commands.choices["tune"].add_argument("--brand-new", type=int, default=7, help="an option added later")
        return parser

    monkeypatch.setattr(cli, "build_parser", with_new_option)
    assert "| `--brand-new` `BRAND_NEW` | `7` | an option added later |" in hooks.cli_page()


def test_config_reference_has_every_key_with_type_default_and_meaning(site):
    from longtail.config import SCHEMA, _type_name

    page = hooks.config_page()
    built = built_html(site, "reference/config.md").read_text(encoding="utf-8")
    defaults = hooks.config_defaults()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([\w.]+)` \|.*$", page, re.M)}
    assert set(rows) == set(SCHEMA)
    for key, tp in SCHEMA.items():
        cells = [c.strip() for c in rows[key].strip("|").split(" | ")]
        assert cells[1] == hooks._cell(_type_name(tp)) and cells[2] == hooks._default_text(defaults[key]), rows[key]
        assert len(cells[4]) > 3, f"config key {key} has no meaning: add a comment to its field in config.py"
        assert key in built


def test_every_config_key_has_a_comment_in_the_schema():
    from longtail.config import SCHEMA

    meanings = hooks.field_meanings()
    assert set(meanings) == set(SCHEMA)
    assert not [k for k, v in meanings.items() if not v.strip()]


# ----------------------------------------------------------------------------- every number has a source

# What is not a measurement: versions, hyperparameters and settings, schedule factors, image sizes.
NOT_MEASURED = [
    r"(?:Python|torch|torchvision|Ubuntu|Debian|version)\s*(?:≥|>=)?\s*\d+(?:\.\d+)+\+?",
    r"\b\d+\.\d+\.\d+\b",
    r"(?:lr|weight decay|momentum|τ|λ1|λ2|ε|β|tau|eps)\s*(?:=|of)?\s*\d+(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?",
    r"×\s?\d+(?:\.\d+)?",
    r"\b\d+×\d+\b",
]
MEASURED = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s?(?:%|×|img/s|images/s|s\b)|(?<![\w.])(\d+\.\d+)(?![\w.])")


def prose(text: str) -> str:
    """Text without code, comments, link targets and the allow-listed non-measurements."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = re.sub(r"https?://\S+", " ", text)
    for pattern in NOT_MEASURED:
        text = re.sub(pattern, " ", text)
    return text


def measured_numbers() -> list[tuple[str, str]]:
    files = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
    found = []
    for path in files:
        for match in MEASURED.finditer(prose(path.read_text(encoding="utf-8"))):
            found.append((path.relative_to(REPO).as_posix(), match.group(1) or match.group(2)))
    return found


def results_corpus() -> str:
    return "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sorted(RESULTS.rglob("*"))
                     if p.suffix in (".md", ".csv", ".txt", ".json"))


def test_every_measured_number_in_readme_and_docs_is_in_a_results_file():
    corpus = results_corpus()
    numbers = measured_numbers()
    assert len(numbers) >= 40  # README's tables and the docs' figures are all checked
    missing = [(f, n) for f, n in numbers if not re.search(rf"(?<![\d.]){re.escape(n)}(?![\d])", corpus)]
    assert not missing, f"numbers with no file under benchmarks/results behind them: {missing}"


def test_the_number_check_catches_an_invented_number():
    assert [n for _, n in [("x", n) for n in [m.group(1) or m.group(2) for m in MEASURED.finditer(
        prose("The demo takes 5 min 54 s, about 940 img/s, 1.21× faster; `train.lr=0.05` and torch 2.14.1 are not."))]]
            ] == ["54", "940", "1.21"]
    assert not re.search(r"(?<![\d.])940(?![\d])", results_corpus())


def test_published_numbers_have_a_source_and_a_config():
    rows = hooks.published_rows()
    assert len(rows) >= 40
    for row in rows:
        assert row["source"] and float(row["value"]) > 0
        assert (REPO / row["config"].split()[0]).is_file(), row["config"]


def test_readme_is_short_and_has_the_placeholder_for_measured_times():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150


# ----------------------------------------------------------------------------- license, citation, BibTeX

METHOD_KEYS = ["menon2021logit", "ren2020balanced", "gala", "bagmar", "cao2019ldam", "kang2020decoupling",
               "tao2023lgla", "saerens2002adjusting", "lipton2018bbse", "alexandari2020bcts"]


def test_license_citation_and_every_methods_paper():
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    assert 'license = { text = "MIT" }' in (REPO / "pyproject.toml").read_text()
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT" and cff["title"]
    bib = (REPO / "references.bib").read_text(encoding="utf-8")
    keys = re.findall(r"^@\w+\{([\w-]+),", bib, re.M)
    assert len(keys) == len(set(keys)) and set(METHOD_KEYS) <= set(keys)
    cited = set(re.findall(r"BibTeX `([\w-]+)`", (DOCS / "methods.md").read_text(encoding="utf-8")))
    cited |= set(re.findall(r"\| `([\w-]+)` \|", (DOCS / "citing.md").read_text(encoding="utf-8")))
    assert set(METHOD_KEYS) <= cited and cited <= set(keys), cited ^ set(keys)


# ----------------------------------------------------------------------------- the adding-a-method recipe


def test_adding_a_method_recipe_registers_and_trains(tmp_path, isolated_plugins):
    """The page's one file and config, written as they are, train with no package file edited."""
    from conftest import write_recipe
    from longtail import catalog
    from longtail.config import load_config
    from longtail.engine import fit

    config = write_recipe(tmp_path)
    cfg = load_config(config, ["train.epochs=1", "train.progress=false", "device=cpu"])
    assert (cfg.loss.name, cfg.loss.gamma, cfg.eval.posthoc, cfg.dataset.name) == ("focal_la", 1.5, "prob_la", "blobs")
    assert catalog.entry("loss", "focal_la").source == str(tmp_path / "my_methods.py")
    metrics = fit(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "metrics.json").is_file() and 0 <= metrics["top1"] <= 100
    assert metrics["posthoc"]["name"] == "prob_la"


def test_screenshot_script_parses():
    result = subprocess.run(["bash", "-n", str(REPO / "scripts" / "docs_screenshot.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_results_record_on_the_page_names_its_hardware():
    shown = hooks.result_files()
    assert {p.name for p in RESULTS.glob("*.md")} <= {p.name for p in shown}  # a new record joins the page
    for path in shown:
        provenance = path.parent / "provenance.md"  # a report folder's hardware line is beside its output
        text = path.read_text(encoding="utf-8") + (provenance.read_text(encoding="utf-8") if path.parent != RESULTS else "")
        assert re.search(r"Xeon|EPYC|H200|NVIDIA|\bCPU\b", text), f"{path} names no hardware"
