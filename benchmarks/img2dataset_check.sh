#!/usr/bin/env bash
# The real img2dataset writes shards, bigtrain indexes and trains on them: a check that the
# img2dataset layout the tests imitate (tests/servers.py) is the one the tool writes.
#
# img2dataset pins webdataset<0.3 and bigtrain needs >=1.0, so it lives in its own virtualenv.
# Everything is local: the "web" is an http.server on 127.0.0.1 serving scikit-image's photos.
#
#   bash benchmarks/img2dataset_check.sh [WORKDIR]     (about a minute after the install)
set -euo pipefail
cd "$(dirname "$0")/.."
BT=$PWD/.venv/bin
WORK=${1:-/tmp/bigtrain-img2dataset}
mkdir -p "$WORK"
if [ ! -x "$WORK/venv/bin/img2dataset" ]; then
  python3.11 -m venv "$WORK/venv"
  "$WORK/venv/bin/pip" install -q img2dataset
fi
rm -rf "$WORK/www" "$WORK/shards" "$WORK/ds" "$WORK/run"
# 120 photos (crops of scikit-image's colour photos) and a CSV of their URLs and captions
"$BT/python" - "$WORK" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

work = Path(sys.argv[1])
(work / "www").mkdir(parents=True)
photos = {"cat": data.chelsea(), "coffee": data.coffee(), "rocket": data.rocket()}
rng = np.random.default_rng(0)
rows = ["url,caption"]
for i in range(120):
    name = list(photos)[i % 3]
    p = photos[name]
    h, w = p.shape[:2]
    ch, cw = int(rng.integers(h // 2, h)), int(rng.integers(w // 2, w))
    y, x = int(rng.integers(0, h - ch)), int(rng.integers(0, w - cw))
    Image.fromarray(p[y : y + ch, x : x + cw]).save(work / "www" / f"{i:04d}.jpg", quality=92)
    rows.append(f"URL/{i:04d}.jpg,a photo of a {name} (number {i})")
(work / "urls.template.csv").write_text("\n".join(rows) + "\n")
EOF
cd "$WORK/www"
python3.11 -m http.server 0 --bind 127.0.0.1 > "$WORK/http.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q "port" "$WORK/http.log" && break; sleep 0.1; done
PORT=$(grep -o 'port [0-9]*' "$WORK/http.log" | head -1 | cut -d' ' -f2)
cd "$WORK"
sed "s#URL#http://127.0.0.1:$PORT#" urls.template.csv > urls.csv
"$WORK/venv/bin/img2dataset" --url_list urls.csv --input_format csv --url_col url --caption_col caption \
  --output_format webdataset --output_folder shards --number_sample_per_shard 50 --image_size 64 \
  --resize_mode keep_ratio --processes_count 1 --thread_count 8 --enable_wandb False > img2dataset.log 2>&1
ls shards
cd - > /dev/null
"$BT/bigtrain" index "$WORK/shards" "$WORK/ds" --resolution 32 --label-key none --no-progress
"$BT/bigtrain" train experiment=mnist_dcgan debug=tiny_gan "data.path=$WORK/ds" "run.dir=$WORK/run" \
  tracking.enabled=false eval.enabled=false data.resize=random trainer.max_steps=8 2>&1 | tail -3
"$BT/python" - "$WORK" <<'EOF'
import json
import sys
from pathlib import Path

m = json.loads((Path(sys.argv[1]) / "ds" / "dataset.json").read_text())
print(json.dumps({
    "check": "img2dataset",
    "samples": m["splits"]["train"]["count"],
    "shards": len(m["splits"]["train"]["shards"]),
    "formats": m["image_formats"],
    "captions": m["captions"],
    "metadata": m["metadata"],
    "image_sizes": m["image_sizes"],
}))
EOF
