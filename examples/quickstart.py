"""Quick start: a local daemon with the simulator, deploy, run, update weights, run, stream.

    .venv/bin/python examples/quickstart.py
"""

import numpy as np
from chiploop.architectures import NMNIST_PAPER
from chiploop.client import ChipClient
from chiploop.data.nmnist import NMNIST, default_data_dir
from chiploop.run import Readout
from chiploop_server.local import LocalDaemon

rng = np.random.default_rng(0)
weights = [rng.integers(-20, 21, (o[0], i[0], s.kernel, s.kernel)).astype(np.int8)
           for (i, o), s in zip(NMNIST_PAPER.layer_shapes(), NMNIST_PAPER.stages, strict=True)]
spec = NMNIST_PAPER.spec(weights, thresholds=[60, 200, 300, 300, 300, 300])

data = NMNIST(default_data_dir())
samples = [data[i][0] for i in range(8)]
with LocalDaemon(backend="sim", workers=1) as daemon, ChipClient(daemon.address) as chip:
    print(chip.info().backend)
    deployment = chip.deploy(spec)
    result = chip.run(deployment.model_id, samples,
                      readout=Readout(bin_us=60_000, num_bins=5, membrane_layers=(5,)))
    print(result.counts[5].shape, result.membranes[5].shape, result.counters[:, 2])
    new_id = chip.update_weights(deployment.model_id, {5: -weights[5]})
    result2 = chip.run(new_id, samples, readout=Readout(bin_us=60_000, num_bins=5, membrane_layers=(5,)))
    print(new_id != deployment.model_id, (result2.membranes[5] != result.membranes[5]).any())
    with chip.stream(deployment.model_id, Readout(bin_us=60_000, num_bins=5)) as s:
        out = s.send(samples[0][:2000])
        out2 = s.send(samples[0][2000:])
        outputs = s.read_outputs()
        print(len(out) + len(out2), "output events streamed;", outputs.counts[5].sum(), "counted")
