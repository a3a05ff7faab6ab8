// The reference's poll loop reduced to its mechanism: every job, on every
// delivery, moves itself back to the delayed set (`moveToDelayed`) and is
// delivered again after DELAY_MS. Prints one JSON line of figures.
import { Queue, Worker, DelayedError } from "bullmq";
import IORedis from "ioredis";

const jobs = Number(process.env.JOBS ?? 2000);
const delayMs = Number(process.env.DELAY_MS ?? 1000);
const seconds = Number(process.env.SECONDS ?? 30);
const connection = { host: process.env.REDIS_HOST ?? "127.0.0.1", port: Number(process.env.REDIS_PORT ?? 6379) };
const name = `bench-loop-${process.pid}`;

const redis = new IORedis({ ...connection, maxRetriesPerRequest: null });
const queue = new Queue(name, { connection });
let ticks = 0;
const worker = new Worker(
  name,
  async (job, token) => {
    ticks += 1;
    await job.moveToDelayed(Date.now() + delayMs, token);
    throw new DelayedError();
  },
  { connection, concurrency: 64 },
);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
for (let i = 0; i < jobs; i += 1000) {
  const batch = [];
  for (let j = i; j < Math.min(i + 1000, jobs); j += 1) batch.push({ name: "poll", data: { run: j } });
  await queue.addBulk(batch);
}
await sleep(delayMs + 2000);
const start = ticks;
const t0 = Date.now();
await sleep(seconds * 1000);
const done = ticks - start;
const elapsed = (Date.now() - t0) / 1000;
const info = await redis.info("memory");
const used = Number(/used_memory:(\d+)/.exec(info)?.[1] ?? 0);
const version = JSON.parse(await (await import("node:fs/promises")).readFile(new URL("./node_modules/bullmq/package.json", import.meta.url))).version;
console.log(
  JSON.stringify({
    bullmq: version,
    ticksPerSecond: done / elapsed,
    nodeRssMiB: process.memoryUsage().rss / 1048576,
    redisUsedMiB: used / 1048576,
  }),
);
await worker.close(true);
await queue.obliterate({ force: true });
await queue.close();
await redis.quit();
process.exit(0);
