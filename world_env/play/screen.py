"""The pygame window of a play session: the scaled frame and a few lines of heads-up display, and the fps meter."""
from __future__ import annotations

import time
from collections import deque

import numpy as np


MODE_COLOURS = {"dream": (235, 120, 235), "real": (120, 230, 120)}
TEXT = (230, 230, 230)
HUD_LINES = 4


class Screen:
    """The frame upscaled by `scale` (nearest neighbour) above a four-line HUD."""

    def __init__(self, frame_size: tuple[int, int], scale: int, title: str):
        import pygame

        self.pygame = pygame
        height, width = frame_size
        self.frame_px = (width * scale, height * scale)
        self.font = pygame.font.Font(None, 20)
        self.line_px = self.font.get_linesize()
        size = (max(self.frame_px[0], 420), self.frame_px[1] + HUD_LINES * self.line_px + 8)
        self.surface = pygame.display.set_mode(size)
        pygame.display.set_caption(title)

    def draw(self, frame: np.ndarray, mode: str, lines: list[str]) -> None:
        pygame = self.pygame
        self.surface.fill((0, 0, 0))
        image = pygame.surfarray.make_surface(np.ascontiguousarray(frame.transpose(1, 0, 2)))  # (W, H, 3)
        left = (self.surface.get_width() - self.frame_px[0]) // 2
        self.surface.blit(pygame.transform.scale(image, self.frame_px), (left, 0))
        top = self.frame_px[1] + 4
        badge = self.font.render(mode.upper(), True, (0, 0, 0), MODE_COLOURS[mode])
        self.surface.blit(badge, (4, top))
        for i, line in enumerate(lines):
            x = 4 + (badge.get_width() + 8 if i == 0 else 0)
            self.surface.blit(self.font.render(line, True, TEXT), (x, top + i * self.line_px))
        pygame.display.flip()


class FpsMeter:
    """Frames per second over the last `window` ticks."""

    def __init__(self, window: int = 20):
        self.times: deque[float] = deque(maxlen=window)

    def tick(self) -> None:
        self.times.append(time.perf_counter())

    @property
    def fps(self) -> float:
        if len(self.times) < 2 or self.times[-1] == self.times[0]:
            return 0.0
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


# ----------------------------------------------------------------------------------------------------------
# The play loop
