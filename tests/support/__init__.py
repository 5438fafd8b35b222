"""Helpers the test packages share (a test module never imports another test module: it imports from here).

- net: `free_port`
- catalog: a plan with a flat fee and tiered usage, the feature and customer it needs, publishing
- billing: the default sandbox billing profile, a subscribed customer, the scheduled billing run, invoices
- keys: API keys made with the `billow keys` CLI
- usage: Kafka-path event batches and their exact ground truth"""
