import { Client } from "@billow/sdk";

const client = new Client({ url: process.env.BILLOW_URL ?? "http://127.0.0.1:8888", apiKey: process.env.BILLOW_API_KEY });
await client.ingest({ id: "qs-1", type: "prompt", subject: "quickstart-node", data: { tokens: "0.1", model: "gpt" } });
const batch = client.batcher(); // buffers, sends on size, interval and close; retries keep the ids
await batch.add({ id: "qs-2", type: "prompt", subject: "quickstart-node", data: { tokens: "0.2", model: "gpt" } });
await batch.close();
const result = await client.queryMeter("tokens_total", { subject: ["quickstart-node"], groupBy: ["model"] });
for (const row of result.data) console.log(row.groupBy.model, row.value); // gpt 0.3 (exact decimal text)
