"""Write src/finpercep/assets/photo_corpus.tsv from .deb files (the committed list of the photo corpus).

Question it answers: which files of which Debian packages are real photographs, with their checksums,
licences and split. The selection (PHOTOS below) was made by eye from contact sheets of every image in
the packages; renders, illustrations, paintings, logos and duplicate resolutions were left out. The split
is not chosen: photos are ordered by the sha256 of their bytes, the first 9 go to test, the next 7 to val,
the rest to train.

    apt-get download mate-backgrounds lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 \
        plasma-workspace-wallpapers darknet
    python scripts/make_photo_corpus_list.py *.deb
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import sys
from pathlib import Path

from finpercep.data.corpus import CORPUS_LIST, read_deb_members

N_TEST, N_VAL = 9, 7

# package -> {short name: path inside the package}
PHOTOS: dict[str, dict[str, str]] = {
    "darknet": {
        f"darknet_{n}": f"usr/share/darknet/data/{n}.jpg"
        for n in ("dog", "eagle", "giraffe", "horses", "kite", "person")
    },
    "lomiri-wallpapers-16.04": {
        f"lomiri_{n.split('_by_')[0]}": f"usr/share/backgrounds/{n}.jpg"
        for n in (
            "Bridge_by_Sander_Klootwijk",
            "Dragonfly_by_Bolly",
            "Picture_0B_by_freespace",
            "Picture_1A_by_freespace",
            "Wine_by_Jakkub_Mede",
            "aitzgorri_by_Aitzol_Berasategi",
            "free_by_Peter_Nerlich",
            "friends_by_Aitzol_Berasategi",
            "greentock_by_Peter_Nerlich",
            "life_by_Aitzol_Berasategi",
            "picosdeeuropa_by_Aitzol_Berasategi",
            "seeding_by_Clements_Engelhardt",
            "sunset_by_Aitzol_Berasategi",
        )
    },
    "lomiri-wallpapers-20.04": {"lomiri_Kleiber": "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"},
    "mate-backgrounds": {
        f"mate_{n}": f"usr/share/backgrounds/mate/nature/{n}.jpg"
        for n in (
            "Aqua",
            "Blinds",
            "Dune",
            "FreshFlower",
            "Garden",
            "GreenMeadow",
            "LadyBird",
            "RainDrops",
            "Storm",
            "TwoWings",
            "Wood",
            "YellowFlower",
        )
    },
    "plasma-workspace-wallpapers": {
        f"plasma_{n}": f"usr/share/wallpapers/{n}/contents/images/2560x1600.jpg"
        for n in (
            "BytheWater",
            "ColdRipple",
            "ColorfulCups",
            "DarkestHour",
            "EveningGlow",
            "FallenLeaf",
            "Grey",
            "Kite",
            "OneStandsOut",
            "Path",
            "summer_1am",
        )
    },
}


def _matches(pattern: str, path: str) -> bool:
    """A DEP-5 Files pattern against an installed path: ``*``, the same file name, or a path suffix."""
    return (
        pattern == "*"
        or pattern.split("/")[-1] == path.split("/")[-1]
        or fnmatch.fnmatch(path, f"*/{pattern}")
    )


def licence(copyright_text: str, path: str) -> str:
    """The License of the last DEP-5 stanza whose Files patterns match the file."""
    found = "see the package's copyright file"
    for stanza in re.split(r"\n\s*\n", copyright_text):
        files = re.search(r"^Files:(.*(?:\n[ \t].*)*)", stanza, re.M)
        lic = re.search(r"^License:\s*(.+)$", stanza, re.M)
        if not files or not lic:
            continue
        if any(_matches(pat, path) for pat in files.group(1).split()):
            found = lic.group(1).strip()
    return found


def main(debs: list[str]) -> None:
    rows = []
    for deb in debs:
        pkg, version = Path(deb).name.split("_")[:2]
        version = version.replace("%3a", ":")
        wanted = PHOTOS.get(pkg)
        if wanted is None:
            continue
        deb_sha = hashlib.sha256(Path(deb).read_bytes()).hexdigest()
        copyright_path = f"usr/share/doc/{pkg}/copyright"
        members = read_deb_members(Path(deb), [*wanted.values(), copyright_path])
        text = members[copyright_path].decode("utf-8", "replace")
        for name, path in wanted.items():
            sha = hashlib.sha256(members[path]).hexdigest()
            rows.append([name, pkg, version, deb_sha, path, sha, licence(text, path)])
    rows.sort(key=lambda r: r[5])
    lines = ["name\tsplit\tpackage\tversion\tdeb_sha256\tpath\tsha256\tlicense"]
    for i, r in enumerate(rows):
        split = "test" if i < N_TEST else "val" if i < N_TEST + N_VAL else "train"
        lines.append("\t".join([r[0], split, *r[1:]]))
    CORPUS_LIST.write_text("\n".join([lines[0], *sorted(lines[1:])]) + "\n")
    print(f"{CORPUS_LIST}: {len(rows)} photos")


if __name__ == "__main__":
    main(sys.argv[1:])
