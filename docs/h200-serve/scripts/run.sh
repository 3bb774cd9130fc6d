#!/bin/bash
# Device call 3: unpack the vLLM 0.26.0 bundle, serve with the planner's flags, gpu-llm verify, API check, gpu-llm bench.
set -u
D=$PWD/build/devrun/s; R=$OUT/run; mkdir -p $R /tmp/b /tmp/wheels
cp $PWD/build/devrun/p2/bundle.part* /tmp/wheels/ 2>/dev/null
t0=$(date +%s); ls -la /tmp/wheels > $R/setup.log
cat /tmp/wheels/bundle.part0* | xz -T0 -dc | tar -x -C /tmp/b 2>>$R/setup.log \
  || (cat /tmp/wheels/bundle.part0* > /tmp/bundle.tar.xz && python3 -c "import tarfile; tarfile.open('/tmp/bundle.tar.xz','r:xz').extractall('/tmp/b')")
echo "extract $(( $(date +%s) - t0 ))s $(du -sh /tmp/b | cut -f1)" >> $R/setup.log
for i in $(seq 1 150); do [ -f /tmp/model/model.safetensors.index.json ] && break; sleep 2; done
tail -3 /tmp/make_model.log >> $R/setup.log 2>&1
cp /tmp/b/tok/* /tmp/model/
python3 -c 'import secrets; print(secrets.token_hex(24))' > /tmp/apikey
export PYTHONPATH=/tmp/b/site:$PWD PYTHONUNBUFFERED=1 VLLM_API_KEY=$(cat /tmp/apikey)
nvidia-smi --query-gpu=index,name,memory.total,compute_cap,driver_version --format=csv,noheader > $R/gpu.csv
python3 -c 'import vllm; print("vllm", vllm.__version__)' >> $R/setup.log 2>&1
T=$PWD/templates/qwen3_nonthinking.jinja
python3 $D/serve.py $D/plan26.json /tmp/model $T $R/server.log > $R/cmd.txt
SPID=$(tail -1 $R/cmd.txt)
up=$(python3 $D/wait_health.py $SPID 420); rc=$?
echo "health rc=$rc startup_s=$up" >> $R/cmd.txt
if [ $rc -eq 0 ]; then
  python3 -m gpu_llm.cli verify http://127.0.0.1:8000 --api-key-file /tmp/apikey --timeout 60 > $R/verify.json 2> $R/verify.err
  echo "verify rc=$?" >> $R/cmd.txt
  python3 $D/api_check.py /tmp/apikey > $R/api.json 2> $R/api.err
  python3 -m gpu_llm.cli bench http://127.0.0.1:8000 --api-key-file /tmp/apikey --concurrency 1,16,64,256 \
    --prompt-tokens 1024 --max-tokens 256 --out $R/bench.json --plot $R/bench.png \
    --label "H200, vLLM 0.26.0, planner's flags" > $R/bench.log 2>&1
  echo "bench rc=$?" >> $R/cmd.txt
fi
kill -TERM -- -$SPID 2>/dev/null; sleep 5; kill -KILL -- -$SPID 2>/dev/null
echo "total $(( $(date +%s) - t0 ))s" >> $R/cmd.txt
