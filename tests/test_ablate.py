"""launchers/ablate.py's verdicts: seed spread decides what is noise."""
import pytest

from unif2ace.commands import ablate


def _res(ref: dict, var: dict) -> dict:
    empty = {k: [] for k in ablate.METRICS}
    return {"unif2ace": {**empty, **ref}, "dense": {**empty, **var}}


def test_within_noise_uses_two_pooled_standard_deviations():
    a, b = [0.50, 0.52, 0.54], [0.55, 0.57, 0.59]   # sd 0.02 each, difference 0.05 > 2·0.02
    assert ablate.within_noise(a, b) is False
    assert ablate.within_noise(a, [0.52, 0.54, 0.56]) is True  # difference 0.02 < 0.04
    assert ablate.within_noise([0.5], b) is None


def test_direction_verdicts():
    ref = {"gen_attr_acc": [0.70, 0.71, 0.72], "synthface_fid": [50.0, 51.0, 52.0],
           "vqa_acc": [0.90, 0.91, 0.92], "caption_recall": [0.60, 0.61, 0.62]}
    worse = {"gen_attr_acc": [0.60, 0.61, 0.62], "synthface_fid": [60.0, 61.0, 62.0],
             "vqa_acc": [0.80, 0.81, 0.82], "caption_recall": [0.50, 0.51, 0.52]}
    assert ablate.direction_holds("dense", _res(ref, worse)) == "yes"
    better = {"gen_attr_acc": [0.80, 0.81, 0.82], "synthface_fid": [40.0, 41.0, 42.0],
              "vqa_acc": [0.95, 0.96, 0.97], "caption_recall": [0.70, 0.71, 0.72]}
    assert ablate.direction_holds("dense", _res(ref, better)) == "no"
    same = {k: [x + 0.001 for x in v] for k, v in ref.items()}
    assert ablate.direction_holds("dense", _res(ref, same)) == "within noise"
    mixed = dict(worse, vqa_acc=[x + 0.001 for x in ref["vqa_acc"]])
    assert ablate.direction_holds("dense", _res(ref, mixed)) == "yes (1 within noise)"
    one = {k: v[:1] for k, v in worse.items()}
    assert ablate.direction_holds("dense", _res({k: v[:1] for k, v in ref.items()}, one)) == "yes (1 seed)"


def test_report_shows_mean_and_spread():
    ref = {"gen_attr_acc": [0.70, 0.72], "vqa_acc": [0.90, 0.92], "final_loss": [1.0, 1.2]}
    var = {"gen_attr_acc": [0.60, 0.62], "vqa_acc": [0.80, 0.82], "final_loss": [1.5, 1.7]}
    res = _res(ref, var)
    res["unif2ace"]["final_loss"], res["dense"]["final_loss"] = ref["final_loss"], var["final_loss"]
    text = ablate.report(res, {"unif2ace": {"table": "4, 5"}, "dense": {"table": "5", "overrides": ["x=1"]}},
                         "synthface", 10, 2, [0, 1], 1.0)
    row = [line for line in text.splitlines() if line.startswith("| `dense`")][0]
    assert "0.610 ± 0.014 (**-0.100**)" in row and row.rstrip(" |").endswith("yes")  # bold: outside the noise
    assert "Paper: D3Diff" in text
    # variants the paper says nothing about: no direction column, Δ still judged against the noise
    var2 = {"gen_attr_acc": [0.70, 0.74], "vqa_acc": [0.80, 0.82]}
    res2 = {"isolated": {**{k: [] for k in ablate.METRICS}, "final_loss": [], **ref},
            "causal": {**{k: [] for k in ablate.METRICS}, "final_loss": [], **var2}}
    text2 = ablate.report(res2, {"isolated": {}, "causal": {"overrides": ["model.mmu_turns=causal"]}},
                          "synthface", 10, 2, [0, 1], 1.0, reference="isolated")
    row2 = [line for line in text2.splitlines() if line.startswith("| `causal`")][0]
    assert "(+0.010)" in row2 and "(**-0.100**)" in row2
    assert "paper's direction" not in text2 and "Paper: D3Diff" not in text2 and "Tables 4-5" not in text2


@pytest.mark.parametrize("name", ["tables4_5.yaml", "mmu_turns.yaml", "seq_moe_balance.yaml"])
def test_committed_variants_build_valid_configs(name):
    from unif2ace.commands.ablate import DEFAULT_VARIANTS, read_variants
    from unif2ace.config import load_config

    base, variants, reference = read_variants(DEFAULT_VARIANTS.parent / name)
    cfgs = {n: load_config(base, v.get("overrides", [])) for n, v in variants.items()}
    assert reference in cfgs and len(cfgs) >= 2
    ref = cfgs[reference]
    assert all(c != ref for n, c in cfgs.items() if n != reference)  # every variant changes something
