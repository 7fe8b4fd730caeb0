//go:build linux

package tcp

const runtimeLinux = true
