// The reference's whole poll tick of a running query, for `bench
// reference-tick`: a BullMQ worker (concurrency 50 and lockDuration 120 s,
// as the reference) whose processor, per job (one job per run, the
// reference's poll payload),
//   1. reads the run's row from PostgreSQL (pg Pool),
//   2. asks MCE for the task's status: one SOAP Retrieve AsyncActivityStatus
//      (axios), in the envelope the service sends, with an access token
//      fetched once at start from the token endpoint as the service does,
//   3. parses the answer (fast-xml-parser) and reads its Status,
//   4. writes the poll state into the job (`job.updateData`),
//   5. moves the job back to the delayed set (`moveToDelayed`) and throws
//      `DelayedError`.
// After one delay + 2 s of warm-up it prints `{"event":"window-start"}`,
// counts ticks over SECONDS, prints `{"event":"window-end", ...}` with the
// figures, then `{"event":"done", ...}`. Neither SQL text nor tokens are
// printed.
import { readFile } from "node:fs/promises";
import { performance } from "node:perf_hooks";
import { Queue, Worker, DelayedError } from "bullmq";
import IORedis from "ioredis";
import axios from "axios";
import { XMLParser } from "fast-xml-parser";
import pg from "pg";

const env = process.env;
const delayMs = Number(env.DELAY_MS ?? 1000);
const seconds = Number(env.SECONDS ?? 30);
const concurrency = Number(env.CONCURRENCY ?? 50);
const mceUrl = env.MCE_URL;
if (!mceUrl || !env.DATABASE_URL || !env.RUNS_FILE) {
  console.error("MCE_URL, DATABASE_URL and RUNS_FILE are required");
  process.exit(2);
}
const connection = { host: env.REDIS_HOST ?? "127.0.0.1", port: Number(env.REDIS_PORT ?? 6379) };
const name = `bench-tick-${process.pid}`;
const runs = JSON.parse(await readFile(env.RUNS_FILE, "utf8"));

// Connections are kept for the whole benchmark: a backend that exits would
// take its CPU time out of the PostgreSQL sum.
const pool = new pg.Pool({ connectionString: env.DATABASE_URL, max: 10, idleTimeoutMillis: 0 });
const SELECT_RUN =
  "SELECT id, tenant_id, mid, status, task_id, query_definition_id, query_customer_key, target_de_customer_key, poll_started_at FROM shell_query_runs WHERE id = $1";

// The token, once: a refresh-token grant, as the service makes it. On an
// error only its message is printed (an axios error holds the form).
const grant = await axios
  .post(
    `${mceUrl}/v2/token`,
    new URLSearchParams({
      grant_type: "refresh_token",
      refresh_token: env.MCE_REFRESH_TOKEN ?? "",
      client_id: env.MCE_CLIENT_ID ?? "",
      client_secret: env.MCE_CLIENT_SECRET ?? "",
      account_id: env.MCE_MID ?? "",
    }),
    { timeout: 30000 },
  )
  .catch((e) => {
    console.error(`the token grant failed: ${e?.message ?? e}`);
    process.exit(1);
  });
const accessToken = grant.data.access_token;

const escapeXml = (s) =>
  String(s)
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&apos;");

// The service's envelope (service/src/adapters/mce/soap.rs: `envelope` and
// `retrieve_async_status`).
const statusRequest = (taskId) =>
  '<?xml version="1.0" encoding="UTF-8"?>' +
  '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" ' +
  'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">' +
  `<soap:Header><fueloauth xmlns="http://exacttarget.com">${escapeXml(accessToken)}</fueloauth></soap:Header>` +
  '<soap:Body><RetrieveRequestMsg xmlns="http://exacttarget.com/wsdl/partnerAPI"><RetrieveRequest>' +
  "<ObjectType>AsyncActivityStatus</ObjectType>" +
  "<Properties>Status</Properties><Properties>ErrorMsg</Properties><Properties>CompletedDate</Properties>" +
  '<Filter xsi:type="SimpleFilterPart"><Property>TaskID</Property><SimpleOperator>equals</SimpleOperator>' +
  `<Value>${escapeXml(taskId)}</Value></Filter>` +
  "</RetrieveRequest></RetrieveRequestMsg></soap:Body></soap:Envelope>";

const parser = new XMLParser({ ignoreAttributes: true, removeNSPrefix: true, parseTagValue: false });

// As the reference reads it: Results.Properties.Property[] by Name, else
// Results.<Name>; an empty answer gives {}.
function readStatus(xml) {
  const doc = parser.parse(xml);
  const results = doc?.Envelope?.Body?.RetrieveResponseMsg?.Results;
  const result = Array.isArray(results) ? results[0] : results;
  if (!result || typeof result !== "object") return {};
  const props = result.Properties?.Property;
  const list = props === undefined ? [] : Array.isArray(props) ? props : [props];
  const read = (key) => {
    const p = list.find((q) => q?.Name === key);
    if (p !== undefined) return String(p.Value ?? "");
    return result[key] === undefined ? undefined : String(result[key]);
  };
  return { status: read("Status"), errorMsg: read("ErrorMsg"), completedDate: read("CompletedDate") };
}

const redis = new IORedis({ ...connection, maxRetriesPerRequest: null });
const redisPid = Number(/process_id:(\d+)/.exec(await redis.info("server"))?.[1] ?? 0);
const queue = new Queue(name, { connection });
let ticks = 0;
let errors = 0;
let firstError = null;
const statuses = new Map();
const worker = new Worker(
  name,
  async (job, token) => {
    let lastStatus = job.data.lastStatus ?? null;
    try {
      const { rows } = await pool.query(SELECT_RUN, [job.data.runId]);
      if (rows.length === 0) throw new Error("run not found");
      const response = await axios.post(`${mceUrl}/Service.asmx`, statusRequest(job.data.taskId), {
        headers: { "Content-Type": "text/xml", SOAPAction: "Retrieve" },
        timeout: 30000,
        responseType: "text",
      });
      const { status } = readStatus(response.data);
      lastStatus = (status ?? "").trim().toLowerCase();
      statuses.set(lastStatus, (statuses.get(lastStatus) ?? 0) + 1);
    } catch (e) {
      // Counted, and the run goes on being polled (the figures need none).
      // Only the message: an axios error's config holds the token.
      errors += 1;
      firstError ??= String(e?.message ?? e);
    }
    await job.updateData({ ...job.data, pollCount: (job.data.pollCount ?? 0) + 1, lastStatus });
    await job.moveToDelayed(Date.now() + delayMs, token);
    ticks += 1;
    throw new DelayedError();
  },
  { connection, concurrency, lockDuration: 120000 },
);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const startedAt = new Date().toISOString();
for (let i = 0; i < runs.length; i += 1000) {
  await queue.addBulk(
    runs.slice(i, i + 1000).map((run) => ({
      name: "poll-shell-query",
      data: { ...run, pollCount: 0, pollStartedAt: startedAt, notRunningConfirmations: 0 },
      opts: { jobId: `poll-${run.runId}`, removeOnComplete: { age: 3600 }, removeOnFail: { age: 86400 } },
    })),
  );
}
await sleep(delayMs + 2000);

console.log(JSON.stringify({ event: "window-start", redisPid }));
const start = ticks;
const startErrors = errors;
const cpu0 = process.cpuUsage();
const t0 = performance.now();
await sleep(seconds * 1000);
const done = ticks - start;
const cpu = process.cpuUsage(cpu0);
const elapsed = (performance.now() - t0) / 1000;
console.log(
  JSON.stringify({
    event: "window-end",
    ticks: done,
    seconds: elapsed,
    ticksPerSecond: done / elapsed,
    errors: errors - startErrors,
    nodeCpuSeconds: (cpu.user + cpu.system) / 1e6,
    nodeRssMiB: process.memoryUsage().rss / 1048576,
  }),
);

const info = await redis.info("memory");
const used = Number(/used_memory:(\d+)/.exec(info)?.[1] ?? 0);
const version = async (pkg) =>
  JSON.parse(await readFile(new URL(`./node_modules/${pkg}/package.json`, import.meta.url))).version;
console.log(
  JSON.stringify({
    event: "done",
    firstError,
    redisUsedMiB: used / 1048576,
    statuses: Object.fromEntries(statuses),
    versions: {
      node: process.versions.node,
      bullmq: await version("bullmq"),
      axios: await version("axios"),
      "fast-xml-parser": await version("fast-xml-parser"),
      pg: await version("pg"),
    },
  }),
);
await worker.close(true);
await queue.obliterate({ force: true });
await queue.close();
await pool.end();
await redis.quit();
process.exit(0);
