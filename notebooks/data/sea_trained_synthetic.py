"""SEA's official learned estimator trained on the synthetic workload, evaluated at longer N
(python notebooks/data/sea_trained_synthetic.py 60 2048 16384 32768; the README's SEA rows):
trained for `steps` on two `train_n`-token inputs of other seeds, against the same weights
untrained and the training-free estimate, density and recall at each N (seed 0)."""
import json, sys, time
import numpy as np
import spattn
from spattn.methods import sea as S
steps = int(sys.argv[1]); Ntrain = int(sys.argv[2]); Ns = [int(x) for x in sys.argv[3:]]
data = []
for seed in (11, 12):
    w = spattn.synthetic.structured_qkv(B=1, Hq=8, Hkv=2, N=Ntrain, D=128, seed=seed)
    data.append((w.q, w.k, w.v))
maxpos = max(Ns)
t0 = time.time()
init = S.init_weights(8, 128, width=128, max_positions=maxpos, seed=0)
res = S.train(data, dict(init), k=64, width=128, steps=steps, progress=False, max_positions=maxpos)
print("trained", steps, "steps on", Ntrain, "tokens in", round(time.time() - t0), "s; loss", res.losses[0], "->", res.losses[-1], flush=True)
out = {"steps": steps, "train_n": Ntrain, "loss_first_last": [float(res.losses[0]), float(res.losses[-1])], "rows": []}
for N in Ns:
    w = spattn.synthetic.structured_qkv(B=1, Hq=8, Hkv=2, N=N, D=128, seed=0)
    for label, m in (("trained", spattn.methods.get("sea", weights=res.weights)),
                     ("untrained", spattn.methods.get("sea", weights=init)),
                     ("training-free", spattn.methods.get("sea"))):
        mask = m.estimate(w.q, w.k, causal=True, v=w.v) if label != "training-free" else m.estimate(w.q, w.k, causal=True)
        dens = float(np.mean(mask.density(q_len=N, causal=True)))
        rec = float(np.nanmean(spattn.metrics.recall(w.q, w.k, mask, causal=True)))
        out["rows"].append({"N": N, "estimate": label, "density": dens, "recall": rec})
        print(N, label, round(dens, 4), round(rec, 3), flush=True)
json.dump(out, open("notebooks/data/sea_trained_synthetic.json", "w"), indent=1)
