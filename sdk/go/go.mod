module github.com/billow-dev/billow/sdk/go

go 1.19
