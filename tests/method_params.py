"""Shared by the method tests: knobs that make each method act on the 4-layer, 36-visual-token
random models, and the methods that read the CLIP tower."""

PARAMS = {
    "shortv": {"layers": [3, 1]},
    "fastv": {"budget": 200},
    "dart": {"budget": 300},
    "pdrop": {"layer_list": [8, 16, 24], "lam": 0.5},
    "vtw": {"k": 2},
    "random": {"budget": 200, "layer": 1},
}
CLIP_METHODS = {"fastervlm", "visionzip", "vispruner", "prumerge_plus", "tome"}  # read the CLIP tower
