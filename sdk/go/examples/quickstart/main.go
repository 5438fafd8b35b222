package main

import (
	"context"
	"fmt"
	"log"
	"os"

	billow "github.com/billow-dev/billow/sdk/go"
)

func main() {
	ctx := context.Background()
	client := billow.New(os.Getenv("BILLOW_URL"), billow.WithAPIKey(os.Getenv("BILLOW_API_KEY")))
	first := billow.Event{ID: "qs-1", Type: "prompt", Subject: "quickstart-go", Data: map[string]any{"tokens": "0.1", "model": "gpt"}}
	if err := client.Ingest(ctx, first); err != nil {
		log.Fatal(err)
	}
	batch := client.NewBatcher(billow.BatcherOptions{}) // buffers, sends on size, interval and Close; retries keep the ids
	batch.Add(billow.Event{ID: "qs-2", Type: "prompt", Subject: "quickstart-go", Data: map[string]any{"tokens": "0.2", "model": "gpt"}})
	if err := batch.Close(ctx); err != nil {
		log.Fatal(err)
	}
	result, err := client.QueryMeter(ctx, "tokens_total", billow.MeterQuery{Subject: []string{"quickstart-go"}, GroupBy: []string{"model"}})
	if err != nil {
		log.Fatal(err)
	}
	for _, row := range result.Data {
		fmt.Println(row.GroupBy["model"], row.Value) // gpt 0.3 (a json.Number, exact)
	}
}
