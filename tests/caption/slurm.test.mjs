#!/usr/bin/env node
// `loupe caption` on a real single-node Slurm cluster that this test starts
// itself (ctest `caption_slurm`): munged, slurmctld and slurmd from Debian's
// munge and slurm-wlm, every path and port of theirs in the build directory.
//
//   - a 4-task job array (tools/slurm/caption.sbatch) over 4 WebDataset shards of
//     generated scenes writes the rows a single `loupe caption` process writes;
//   - one task cancelled mid-run (scancel) and submitted again (--shards 4):
//     every item exactly once, the same rows.
//
// The daemons are stopped by PID at the end, also when a check fails. Needs
// root (slurmd runs jobs as their user) and the packages: exit 77 (skipped)
// without them, which CI counts as a failure (tools/setup.sh installs them).
//
// usage: node tests/caption/slurm.test.mjs --build BUILD_DIR
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { build, check, cli, demoMmproj, demoModel, freePort, jsonl as rows, root, run as runToEnd, runTest, sleep } from '../harness.mjs';

const model = ['-m', demoModel, '--mmproj', demoMmproj];
const work = path.join(build, 'slurm-test');
const PROMPT = 'What does this image show?';
const run = (cmd, args, opts = {}) => runToEnd(cmd, args, { timeout: 300000, ...opts });  // a job that never ends: a failure

const skip = (why) => { console.log(`SKIPPED: ${why}`); process.exit(77); };
for (const b of ['munged', 'mungekey', 'slurmctld', 'slurmd', 'sbatch', 'scancel', 'squeue', 'scontrol'])
  if (spawnSync('sh', ['-c', `command -v ${b}`]).status !== 0) skip(`${b} is not installed (apt-get install slurm-wlm munge)`);
if (process.getuid() !== 0) skip('slurmd has to run as root here');

// ---- the cluster
fs.rmSync(work, { recursive: true, force: true });
fs.mkdirSync(path.join(work, 'state'), { recursive: true });
fs.mkdirSync(path.join(work, 'spool'));
const pidFiles = ['slurmctld.pid', 'slurmd.pid', 'munged.pid'].map((f) => path.join(work, f));
function stopDaemons() {
  spawnSync('scontrol', ['shutdown'], { env: { ...process.env, SLURM_CONF: conf }, timeout: 10000 });
  for (const f of pidFiles) {
    if (!fs.existsSync(f)) continue;
    const pid = Number(fs.readFileSync(f, 'utf8'));
    for (let i = 0; i < 50; ++i) {  // scontrol shutdown ends slurmctld and slurmd; munged is ours to end
      try { process.kill(pid, i === 0 && f.endsWith('munged.pid') ? 'SIGTERM' : 0); } catch { break; }
      if (i === 49) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      spawnSync('sleep', ['0.1']);
    }
  }
}
const conf = path.join(work, 'slurm.conf');
process.on('exit', stopDaemons);
const host = os.hostname().split('.')[0];
const env = { ...process.env, SLURM_CONF: conf, LOUPE: cli };
async function startCluster() {
  run('mungekey', ['-c', '-k', path.join(work, 'munge.key')]);
  fs.chmodSync(path.join(work, 'munge.key'), 0o600);
  run('munged', ['-f', `--key-file=${work}/munge.key`, `--socket=${work}/munge.socket`, `--pid-file=${work}/munged.pid`,
                 `--log-file=${work}/munged.log`, `--seed-file=${work}/munged.seed`]);
  fs.writeFileSync(conf, `ClusterName=loupetest
SlurmctldHost=${host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=${work}/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=${work}/state
SlurmdSpoolDir=${work}/spool
SlurmctldPidFile=${work}/slurmctld.pid
SlurmdPidFile=${work}/slurmd.pid
SlurmctldLogFile=${work}/slurmctld.log
SlurmdLogFile=${work}/slurmd.log
SlurmctldPort=${await freePort()}
SlurmdPort=${await freePort()}
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
NodeName=${host} CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=loupe Nodes=${host} Default=YES MaxTime=INFINITE State=UP
`);
  run('slurmctld', ['-f', conf], { env });
  run('slurmd', ['-f', conf], { env });
  for (let i = 0; i < 300; ++i) {
    const s = spawnSync('sinfo', ['-h', '-o', '%T'], { env, encoding: 'utf8' });
    if (s.status === 0 && /idle/.test(s.stdout)) return;
    await sleep(100);
  }
  throw new Error(`the node did not become idle in 30 s: ${fs.readFileSync(path.join(work, 'slurmd.log'), 'utf8').slice(-2000)}`);
}

async function main() {
  await startCluster();
  check(true, `single-node cluster up (munged, slurmctld, slurmd on ${host})`);

  // ---- 4 WebDataset shards of 40 generated scenes each
  const scenes = path.join(work, 'scenes'), shards = path.join(work, 'shards');
  run('/usr/bin/python3', [path.join(root, 'tools/demo_model/scenes.py'), '--out', scenes, '--seed', '3000', '--count', '160']);
  fs.mkdirSync(shards);
  run('/usr/bin/python3', ['-c', `
import io, os, tarfile
files = sorted(f for f in os.listdir("${scenes}") if f.endswith(".png"))
for s in range(4):
    with tarfile.open(f"${shards}/shard-{s:05d}.tar", "w") as t:
        for k, f in enumerate(files[s::4]):
            data = open(os.path.join("${scenes}", f), "rb").read()
            info = tarfile.TarInfo(f"{s}{k:05d}.png"); info.size = len(data); t.addfile(info, io.BytesIO(data))
`]);
  const input = path.join(shards, 'shard-{00000..00003}.tar');
  const args = [...model, '--input', input, '-p', PROMPT, '--batch', '4', '-n', '128'];
  const strip = (r) => JSON.stringify({ ...r, ms: 0 });
  const read = (dir) => [0, 1, 2, 3].map((s) => rows(path.join(dir, `shard-0000${s}.jsonl`)).map(strip));

  // ---- one process: the reference
  run(cli, ['caption', ...args, '--output', path.join(work, 'single'), '-t', '2']);
  const single = read(path.join(work, 'single'));

  // ---- a 4-task job array
  const sbatch = (extra, out) => run('sbatch', ['--parsable', ...extra, path.join(root, 'tools/slurm/caption.sbatch'), ...args, '--output', out],
                                     { env, cwd: root }).trim();
  sbatch(['--wait', '--array=0-3', `--output=${work}/array-%A_%a.log`], path.join(work, 'array'));
  const array = read(path.join(work, 'array'));
  check(JSON.stringify(array) === JSON.stringify(single), 'a 4-task job array over 4 shards writes the rows one process writes');

  // ---- cancel one task mid-run, submit it again
  const out = path.join(work, 'cancelled');
  const job = sbatch(['--array=0-3', `--output=${work}/cancel-%A_%a.log`], out);
  const tmp = path.join(out, 'shard-00001.jsonl.tmp');
  let cancelledAt = -1;
  for (let i = 0; i < 6000; ++i) {  // 60 s at most
    const n = fs.existsSync(tmp) ? fs.readFileSync(tmp, 'utf8').split('\n').length - 1 : 0;
    if (n >= 1) { run('scancel', [`${job}_1`], { env }); cancelledAt = n; break; }
    if (fs.existsSync(path.join(out, 'shard-00001.jsonl'))) break;
    await sleep(10);
  }
  for (let i = 0; i < 600; ++i) {  // the other tasks finish (60 s at most)
    if (run('squeue', ['-h', '-j', job], { env }).trim() === '') break;
    await sleep(100);
  }
  const partial = fs.existsSync(tmp) && !fs.existsSync(path.join(out, 'shard-00001.jsonl'));
  check(cancelledAt >= 1 && partial, `scancel of task 1 after ${cancelledAt} row(s): its shard is left partial`,
        `cancelled at ${cancelledAt}, partial ${partial}`);
  // --shards 4: the re-submitted array has one task, the slicing must stay the first array's
  const again = spawnSync('sbatch', ['--parsable', '--wait', '--array=1', `--output=${work}/again2-%A_%a.log`,
                                     path.join(root, 'tools/slurm/caption.sbatch'), ...args, '--output', out, '--shards', '4'],
                          { env, cwd: root, encoding: 'utf8', timeout: 300000 });
  check(again.status === 0, 'task 1 submitted again (sbatch --array=1 ... --shards 4) completes', again.stderr);
  const log = fs.readdirSync(work).filter((f) => f.startsWith('again2-')).map((f) => fs.readFileSync(path.join(work, f), 'utf8')).join('');
  const todo = Number((/(\d+) images to caption/.exec(log) || [])[1]);
  check(todo < 40, `the re-submitted task resumes: ${todo} of its 40 images left to caption`, log);
  const final = read(out);
  check(JSON.stringify(final) === JSON.stringify(single), 'after the cancel and the re-submission: every item exactly once, the same rows');
}

await runTest(main, () => {
  stopDaemons();
  const left = pidFiles.filter((f) => {
    if (!fs.existsSync(f)) return false;
    try { process.kill(Number(fs.readFileSync(f, 'utf8')), 0); return true; } catch { return false; }
  });
  check(left.length === 0, 'munged, slurmctld and slurmd stopped', left.join(' '));
});
