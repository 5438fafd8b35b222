import os

from billow_sdk import Client

client = Client(os.environ.get("BILLOW_URL", "http://127.0.0.1:8888"), api_key=os.environ.get("BILLOW_API_KEY"))
client.ingest(client.event("prompt", "quickstart-py", {"tokens": "0.1", "model": "gpt"}, id="qs-1"))
with client.batcher() as batch:  # buffers, sends on size, interval and close; retries keep the ids
    batch.add("prompt", "quickstart-py", {"tokens": "0.2", "model": "gpt"}, id="qs-2")
result = client.query_meter("tokens_total", subject=["quickstart-py"], group_by=["model"])
for row in result["data"]:
    print(row["groupBy"]["model"], row["value"])  # gpt 0.3 (a Decimal, exact)
