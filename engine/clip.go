package engine

import (
	"log/slog"

	"github.com/dimagi/ptop/component"
)

// ClipBytes is how much of a long value Clip keeps.
const ClipBytes = component.ClipBytes

// Clip is component.Clip.
func Clip(s string) string { return component.Clip(s) }

// ClipWords is component.ClipWords.
func ClipWords(s string) string { return component.ClipWords(s) }

// ClipAttr is component.ClipAttr.
func ClipAttr(key, value string) slog.Attr { return component.ClipAttr(key, value) }
