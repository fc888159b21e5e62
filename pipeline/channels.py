"""Which channels of a panel feed the model, from their names: one function for ingest, prelabel and predict.

Mesmer takes [nuclear, membrane/cytoplasm]. Panels name the nuclear stain many ways: DAPI, Hoechst, DRAQ5 on
fluorescence; HH3 / Histone H3 on MIBI; DNA1, DNA2, Ir191, Ir193 (the iridium intercalator) on IMC, often with a
mass prefix (191Ir_DNA1). Names are compared folded (lower case, letters and digits only).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# whole folded names, or prefixes (the trailing "*"), of nuclear stains, best first
NUCLEAR = ("dapi", "hoechst*", "nuclear", "nuclei", "nucleus", "dna*", "ir191*", "ir193*", "191ir*", "193ir*",
           "histoneh3*", "hh3", "h3", "h3k*", "draq5", "sytox*", "propidiumiodide", "pi", "nuc")
# membrane / cytoplasm markers Mesmer was trained with or that outline cells well (the panel's order decides)
MEMBRANE = ("membrane", "cytoplasm", "ecadherin*", "ecad", "cdh1", "panck", "pancytokeratin", "pankeratin*",
            "keratin*", "cytokeratin*", "cd45*", "nakatpase*", "atp1a1", "betacatenin", "bcatenin", "cd44",
            "hlaabc", "hlaclassi", "cd3", "cd4", "cd8", "cd20", "cd31", "cd68", "vimentin", "wga", "cd11c")
# files without channel names get these (pipeline.io); they say nothing about the stain
UNNAMED = re.compile(r"^ch\d+$")


def fold(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _rank(name: str, patterns) -> int | None:
    folded = fold(name)
    for rank, p in enumerate(patterns):
        if (folded.startswith(p[:-1]) if p.endswith("*") else folded == p):
            return rank
    # IMC names carry the metal and mass around the target (191Ir_DNA1, DNA1_Ir191): look at each part
    parts = [fold(part) for part in re.split(r"[^A-Za-z0-9]+", str(name)) if part]
    if len(parts) > 1:
        ranks = [r for part in parts if (r := _rank(part, patterns)) is not None]
        return min(ranks) if ranks else None
    return None


@dataclass(frozen=True)
class ChannelChoice:
    nuclear: int
    membrane: int | None  # None: a nuclear-only panel
    nuclear_by_name: bool  # False: no name looked nuclear, channel 0 was taken
    membrane_by_name: bool

    def describe(self, names) -> str:
        nuc = (f"nuclear {names[self.nuclear]!r}" + ("" if self.nuclear_by_name
                                                      else " (no channel name looks nuclear: the first channel)"))
        if self.membrane is None:
            return f"{nuc}; no membrane channel (whole cells from the nuclear channel only)"
        mem = f"membrane {names[self.membrane]!r}" + ("" if self.membrane_by_name
                                                       else " (no known membrane marker: the first other channel)")
        return f"{nuc}, {mem}"


def choose_model_channels(names) -> ChannelChoice:
    """The nuclear and membrane channels among ``names`` (indices): the best-ranked nuclear stain (else channel
    0), then the panel's first membrane/cytoplasm marker among the others (else the first other channel that is
    not a second nuclear stain; None for a one-channel panel)."""
    names = [str(n) for n in names]
    if not names:
        raise ValueError("no channels to choose from")
    nuclear_ranks = [(_rank(n, NUCLEAR), i) for i, n in enumerate(names)]
    found = [(r, i) for r, i in nuclear_ranks if r is not None]
    nuclear = min(found)[1] if found else 0
    others = [i for i in range(len(names)) if i != nuclear]
    markers = [i for i in others if _rank(names[i], MEMBRANE) is not None]
    if markers:
        membrane, by_name = markers[0], True
    else:
        # a second nuclear-looking stain (DNA2 beside DNA1) outlines no cell: prefer any other channel
        plain = [i for i in others if _rank(names[i], NUCLEAR) is None]
        membrane, by_name = ((plain or others)[0] if others else None), False
    return ChannelChoice(nuclear, membrane, bool(found), by_name)


# the smallest side an image may have to be segmented: a few cells across at the model's 0.5 µm/px
MIN_SEGMENT_SIDE = 32


def check_segmentable(shape, what: str = "image") -> None:
    """Refuse, with a clear message, an image too small to hold a cell (a 5×5 image would give 0 cells)."""
    h, w = int(shape[0]), int(shape[1])
    if min(h, w) < MIN_SEGMENT_SIDE:
        raise ValueError(f"{what} is {h}x{w} px: too small to segment (cells are 10-30 px across; "
                         f"each side needs at least {MIN_SEGMENT_SIDE} px)")
