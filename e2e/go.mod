module github.com/pullwatch/pullwatch/e2e

go 1.26.0

require github.com/pullwatch/pullwatch/proto v0.0.0

replace github.com/pullwatch/pullwatch/proto => ../proto
