#!/usr/bin/env bash
# The input stream on a GPU machine (issue 15): batches of JPEG photos (300-500 px sides, q95) at 128
# and 256 px, on the GPU as floats, with data.decode=cpu (PIL in the loader's workers, uint8 through
# pinned memory) against data.decode=gpu (nvJPEG through torchvision.io.decode_jpeg(device="cuda"),
# torch's antialiased resize), at 4, 8 and 14 loader workers, beside torchvision's ImageFolder and
# a plain webdataset pipeline at the same workers. One call of about 5 minutes; one JSON line each.
#
# The GPU image lacks webdataset and braceexpand: carry their wheels (see the device README):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       webdataset==1.0.2 braceexpand==0.1.7
# then run, with carry=[".whl"]:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
#     export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/gpu/stream.sh
set -u
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nproc
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
cd benchmarks
run() {
  timeout "$1" python3 stream.py source=jpeg device=cuda images=2000 batch=64 "${@:2}" 2>&1 | tail -1
}
run 150 res=128 workers=4,8,14 batches=60 decode=cpu,gpu resample=bilinear,bicubic
run 150 res=256 workers=4,8,14 batches=40 decode=cpu,gpu resample=bilinear,bicubic
