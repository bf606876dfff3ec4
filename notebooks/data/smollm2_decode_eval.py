"""How notebooks/data/smollm2_decode_eval.json was made (python notebooks/data/smollm2_decode_eval.py;
several minutes per decode method on 2 cores): SmolLM2-135M passkey retrieval with each decode method
(prefill dense, every decode step through the method), and SeerAttention-R with gates trained per
layer by distillation on 2048 held-out tokens."""
import json

import torch

import spattn
from spattn import model_eval, models
from spattn.integrations import hf
from spattn.methods.seerattention_r import gate_rope_from_config, train_gate

torch.set_num_threads(spattn.num_threads())
model, tok = models.load("smollm2")
out = {"model": "smollm2", "build": spattn.build_info(), "records": []}


def run(name, dm, extra=None):
    recs = model_eval.evaluate_model(model, tok, ["dense"], [4096, 8192], decode_method=dm, skip=["recall"],
                                     progress=False)
    for r in recs:
        d = r.as_dict()
        d["decode_method"] = name
        d.update(extra or {})
        out["records"].append(d)
        print(name, r.n, f"{r.passkey_hits}/{r.passkey_trials}", r.passkey_outputs, flush=True)


for name in ("quest", "tidaldecode", "tokenselect", "doublesparse"):
    run(name, name)

fit_ids = models.text_ids(tok, 2048, held_out=True)
hf.use(model, method="dense")
with hf.capture(model, gate_inputs=True) as store, torch.no_grad():
    model(fit_ids)
rope = gate_rope_from_config(model.config, 128)
gates, losses = {}, {}
for layer in sorted(store):
    res = train_gate([store[layer][:4]], steps=100, progress=False, **rope)
    gates[layer], losses[layer] = res.gate, (float(res.losses[0]), float(res.losses[-1]))
hf.restore(model)
run("seerattention_r", spattn.methods.get("seerattention_r", gate=gates),
    {"gate_training": {"steps": 100, "fit_tokens": 2048, "loss_first_last": losses}})
with open("notebooks/data/smollm2_decode_eval.json", "w") as fh:
    json.dump(out, fh, indent=1)
