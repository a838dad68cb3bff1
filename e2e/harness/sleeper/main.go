// Command sleeper is the one process inside the e2e test images: built as a
// static binary it is both the pod sandbox ("pause") process and the app
// container's process.
//
//	/sleep                    sleep until SIGTERM or SIGINT, then exit 0
//	/sleep DURATION [CODE]    sleep DURATION (Go syntax, "0" allowed), then exit CODE (default 0)
//
// Either way SIGTERM or SIGINT ends it at once with status 0.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)

	var timeout <-chan time.Time
	code := 0
	if len(os.Args) > 1 {
		d, err := time.ParseDuration(os.Args[1])
		if err != nil {
			if n, nerr := strconv.Atoi(os.Args[1]); nerr == nil {
				d, err = time.Duration(n)*time.Second, nil
			}
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "sleeper: bad duration %q: %v\n", os.Args[1], err)
			os.Exit(2)
		}
		if len(os.Args) > 2 {
			code, err = strconv.Atoi(os.Args[2])
			if err != nil {
				fmt.Fprintf(os.Stderr, "sleeper: bad exit code %q\n", os.Args[2])
				os.Exit(2)
			}
		}
		timeout = time.After(d)
	}
	select {
	case s := <-sig:
		fmt.Printf("sleeper: %v, exiting\n", s)
		os.Exit(0)
	case <-timeout:
		os.Exit(code)
	}
}
