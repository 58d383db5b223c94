"""Device-side: accuracy + 1-thread CPU time of each run (harness-equivalent), jobs in parallel processes."""
import copy, json, os, sys, time, traceback
import multiprocessing as mp
import torch
torch.set_num_threads(1)
import refimpl
from refimpl.bench import digits
from refimpl.core.config import QuantConfig
from refimpl.core.data import TaskData
from refimpl.core.fakequant import quantize_activations
from refimpl.data_free.dfq import dfq
from refimpl.data_free.zeroq import zeroq
from refimpl.data_free.zaq import zaq
from refimpl.other.qdrop import qdrop
import refimpl.redistribution.adaround, refimpl.mechanism.gptq, refimpl.baselines.rtn  # noqa

MODEL = digits.load_model(); SPLIT = digits.load_split()
pool = SPLIT["calib"].x
CALIB = list(pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[:180]].split(60))
SETTINGS = [(8, 8), (4, 8), (3, 8), (4, 4), (2, 4), (2, 2)]
OWN = {"dfq": dfq, "zeroq": zeroq, "zaq": zaq, "qdrop": qdrop}
METHODS = [("rtn", {}), ("adaround", {}), ("adaround", {"iters": 1000}), ("gptq", {}),
           ("dfq", {}), ("dfq", {"bias_correct": False}), ("dfq", {"equalize": False, "absorb": False, "bias_correct": False}),
           ("zeroq", {}), ("zeroq", {"source": "real"}), ("zaq", {}),
           ("qdrop", {}), ("qdrop", {"p": 0.0}), ("qdrop", {"p": 1.0}), ("qdrop", {"iters": 300}), ("qdrop", {"p": 0.0, "iters": 300})]

def job(args):
    name, opts, (b, a) = args
    torch.set_num_threads(1); torch.manual_seed(0)
    m = copy.deepcopy(MODEL)
    c0, w0 = time.process_time(), time.perf_counter()
    try:
        if name in OWN:
            cfg = QuantConfig(bits=b, sym=True, act_bits=a)
            real = name == "qdrop" or opts.get("source") == "real"
            m = OWN[name](m, cfg, TaskData(calib=CALIB) if real else TaskData(), **opts)
        else:
            refimpl.quantize(m, name, bits=b, sym=True, calib=CALIB, **opts)
            quantize_activations(m, a, CALIB)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        return dict(name=name, opts=opts, bits=b, act=a, acc=digits.accuracy(m, SPLIT["test"]), cpu=round(cpu, 2), wall=round(wall, 2))
    except Exception:
        return dict(name=name, opts=opts, bits=b, act=a, error=traceback.format_exc()[-600:])

if __name__ == "__main__":
    jobs = [(n, o, s) for n, o in METHODS for s in SETTINGS]
    # slow ones first
    jobs.sort(key=lambda j: -(3 if j[0] in ("qdrop", "zaq") else 1))
    out = []
    with mp.get_context("fork").Pool(int(sys.argv[1]) if len(sys.argv) > 1 else 14) as p:
        for r in p.imap_unordered(job, jobs):
            out.append(r)
            with open(os.path.join(os.environ.get("OUT", "/tmp"), "table.json"), "w") as f:
                json.dump(out, f)
    for n, o in METHODS:
        row = {(r["bits"], r["act"]): r for r in out if r["name"] == n and r["opts"] == o}
        cells = [f"{row[s]['acc']:.4f}" if "acc" in row.get(s, {}) else "ERR" for s in SETTINGS]
        cpus = [row[s].get("cpu", 0) for s in SETTINGS if s in row]
        print(f"{n:9s} {json.dumps(o):45s}", " ".join(cells), f"cpu max {max(cpus):.2f}s")
    for r in out:
        if "error" in r:
            print("ERROR", r["name"], r["opts"], r["bits"], r["act"], r["error"])
