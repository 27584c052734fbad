"""Post hoc scoring of ensemble rules over a workspace's rounds (docs/results.md, "two ensemble rules").

    python docs/scripts/ensemble_rules.py W DATA_ROOT round0_template,round1_bootstrap[,...]

Scores, against the synthetic hidden truth of DATA_ROOT, each round's submission.csv and odds-scaled oof.csv,
and their ensembles: equal and global skill weights (the pipeline's rule), per-class skill weights (box AUROC
per class, mixed with the global weight by a share a) and a rank mean. A measurement script, not library code.
"""
import sys
from pathlib import Path
import numpy as np, pandas as pd
from sklearn.metrics import roc_auc_score
from rfcx_lightning.data.annotations import DataRoot, load_boxes
from rfcx_lightning.metrics import lwlrap
from rfcx_lightning.postprocessing import odds_scale_to_prior
from rfcx_lightning.postprocessing.repredict import box_scores
from rfcx_lightning.stages.context import RFCX_TEST_PRIOR
from rfcx_lightning.workspace import read_npz

ws, root = Path(sys.argv[1]), Path(sys.argv[2])
members = sys.argv[3].split(",")
boxes, scheme = load_boxes(DataRoot(root), duration_s=60.0, native_sample_rate=48000)
prior = np.asarray(RFCX_TEST_PRIOR[:24])
cols = [f"s{s}" for s in range(24)]
test_truth = pd.read_csv(root / "truth/test_labels.csv", dtype={"recording_id": str}).set_index("recording_id")
train_truth = pd.read_csv(root / "truth/train_labels.csv", dtype={"recording_id": str}).set_index("recording_id")

def per_class_auroc(run):
    d = read_npz(ws / run / "oof_framewise.npz")
    ids = [str(r) for r in d["recording_id"]]
    s = box_scores(d["framewise"].astype(np.float32), ids, boxes, 60.0)
    is_tp, cl = boxes["is_tp"].to_numpy(bool), boxes["class_index"].to_numpy()
    out = np.full(24, np.nan)
    for c in range(24):
        m = cl == c
        if 0 < is_tp[m].sum() < m.sum():
            out[c] = roc_auc_score(is_tp[m], s[m])
    return out

def load(run, name, scale):
    f = pd.read_csv(ws / run / name, dtype={"recording_id": str}).set_index("recording_id")[cols]
    x = f.to_numpy(float)
    return f.index, (odds_scale_to_prior(x, prior) if scale else x)

auc = {m: per_class_auroc(m) for m in members}
for m in members:
    print(m, "box AUROC mean %.3f" % np.nanmean(auc[m]), np.round(auc[m], 2).tolist())
test = {}; oof = {}
for m in members:
    ids_t, test[m] = load(m, "submission.csv", False)
    ids_o, oof[m] = load(m, "oof.csv", True)
yt = test_truth.loc[ids_t, cols].to_numpy() > 0
yo = train_truth.loc[ids_o, cols].to_numpy() > 0
A = np.stack([np.nan_to_num(auc[m], nan=0.5) for m in members])          # (M, C)
glob = np.clip(np.array([np.nanmean(auc[m]) for m in members]) - 0.5, 0, None) ** 2
glob = glob / glob.sum()

def score(W):
    W = W / W.sum(0, keepdims=True)
    t = sum(W[i][None] * test[m] for i, m in enumerate(members))
    o = sum(W[i][None] * oof[m] for i, m in enumerate(members))
    return lwlrap(t, yt), lwlrap(o, yo)

for m in members:
    print(f"{m:24s} test {lwlrap(test[m], yt):.4f} oof {lwlrap(oof[m], yo):.4f}")
print("equal        test %.4f oof %.4f" % score(np.ones((len(members), 24))))
print("global skill test %.4f oof %.4f" % score(np.repeat(glob[:, None], 24, 1)), np.round(glob, 2))
pc = np.clip(A - 0.5, 0, None) ** 2 + 1e-6
pc = pc / pc.sum(0, keepdims=True)
for alpha in (0.25, 0.5, 0.75, 1.0):
    W = (1 - alpha) * glob[:, None] + alpha * pc
    print(f"per-class a={alpha:.2f} test %.4f oof %.4f" % score(W))
# rank mean
from scipy.stats import rankdata
def rank(x): return np.apply_along_axis(rankdata, 0, x) / len(x)
t = sum(glob[i] * rank(test[m]) for i, m in enumerate(members)); o = sum(glob[i] * rank(oof[m]) for i, m in enumerate(members))
print("rank mean (global skill) test %.4f oof %.4f" % (lwlrap(odds_scale_to_prior(t, prior), yt), lwlrap(odds_scale_to_prior(o, prior), yo)))
for m in members:
    print(f"rank+odds {m:20s} test %.4f oof %.4f" % (lwlrap(odds_scale_to_prior(rank(test[m]), prior), yt), lwlrap(odds_scale_to_prior(rank(oof[m]), prior), yo)))
# raw submissions ranked
for m in members:
    _, raw = load(m, "submission_raw.csv", False)
    print(f"raw->rank+odds {m:20s} test %.4f" % lwlrap(odds_scale_to_prior(rank(raw), prior), yt))
