package netns

const sysSetns = 308 // SYS_SETNS on linux/amd64
