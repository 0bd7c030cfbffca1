"""Interface text: Simplified Chinese by default (the operators are Chinese newsroom staff), English at ``?lang=en``.

One table, so a missing translation is a KeyError in the tests rather than a blank on the page.
"""

from __future__ import annotations

LANGS = ("zh", "en")
DEFAULT_LANG = "zh"

TEXTS: dict[str, tuple[str, str]] = {
    "app_name": ("分发运营台", "Syndication desk"),
    "nav_board": ("看板", "Board"),
    "nav_failures": ("失败处理", "Failures"),
    "nav_channels": ("渠道", "Channels"),
    "logout": ("退出", "Log out"),
    "switch_lang": ("English", "中文"),
    "login_title": ("登录", "Log in"),
    "login_hint": ("请输入 API 令牌（配置项 [server] api_token）。", "Enter the API token ([server] api_token)."),
    "login_token": ("令牌", "Token"),
    "login_submit": ("登录", "Log in"),
    "login_wrong": ("令牌不正确。", "That token is not valid."),
    "login_throttled": (
        "登录失败次数过多，请 {seconds} 秒后再试。",
        "Too many failed logins: try again in {seconds} s.",
    ),
    "login_off": (
        "运营台未启用：请在配置中设置 [server] api_token。",
        "The dashboard is off: set [server] api_token in the config.",
    ),
    "csrf_failed": (
        "请求未通过安全校验（页面过期或来源不符），请刷新页面后重试。",
        "The request failed its security check (stale page or foreign origin): reload the page and try again.",
    ),
    "board_title": ("最新稿件 × 渠道", "Newest stories × channels"),
    "board_story": ("稿件", "Story"),
    "board_empty": ("还没有稿件。", "No stories yet."),
    "board_live": ("每 3 秒自动刷新", "Refreshes every 3 s"),
    "board_stale": ("刷新失败，正在重试…", "Refresh failed, retrying…"),
    "state_queued": ("排队中", "queued"),
    "state_in_flight": ("发送中", "in flight"),
    "state_delivered": ("已发布", "delivered"),
    "state_retry_wait": ("{time} 重试", "retry at {time}"),
    "state_retry_plain": ("等待重试", "retry wait"),
    "state_failed": ("失败", "failed"),
    "state_unknown": ("结果未知", "unknown"),
    "state_canceled": ("已取消", "canceled"),
    "state_superseded": ("已被新版本取代", "superseded"),
    "state_skipped": ("已跳过", "skipped"),
    "state_none": ("—", "—"),
    "queued_until": ("{time} 发送", "due at {time}"),
    "story_title": ("稿件详情", "Story"),
    "story_not_found": ("没有这篇稿件：{id}", "No story {id}"),
    "story_version": ("版本", "Version"),
    "story_received": ("接收时间", "Received"),
    "story_summary": ("摘要", "Summary"),
    "story_body": ("正文", "Body"),
    "story_link": ("原文链接", "Canonical URL"),
    "delivery": ("投递", "Delivery"),
    "action": ("动作", "Action"),
    "state": ("状态", "State"),
    "preview": ("发送内容（预览）", "Payload as sent (preview)"),
    "warnings": ("渲染提示", "Rendering warnings"),
    "receipt": ("回执", "Receipt"),
    "remote_id": ("平台编号", "Remote id"),
    "public_link": ("公开链接", "Public link"),
    "no_receipt": ("暂无回执", "No receipt yet"),
    "attempts": ("尝试记录", "Attempts"),
    "no_attempts": ("尚无尝试", "No attempts yet"),
    "att_number": ("#", "#"),
    "att_started": ("开始", "Started"),
    "att_finished": ("结束", "Finished"),
    "att_outcome": ("结果", "Outcome"),
    "att_code": ("平台代码", "Platform code"),
    "att_message": ("信息", "Message"),
    "att_duration": ("耗时", "Duration"),
    "note": ("备注", "Note"),
    "failures_title": ("失败与结果未知的投递", "Failed and unknown deliveries"),
    "filter_channel": ("渠道", "Channel"),
    "filter_error": ("错误类型", "Error class"),
    "filter_since": ("时间范围（如 2h、1d）", "Since (e.g. 2h, 1d)"),
    "filter_all": ("全部", "All"),
    "filter_apply": ("筛选", "Filter"),
    "failures_empty": ("没有失败或结果未知的投递。", "No failed or unknown deliveries."),
    "select_all": ("全选", "Select all"),
    "replay_selected": ("重发所选", "Replay selected"),
    "replay_all": ("重发全部符合条件的", "Replay all matching"),
    "updated": ("更新时间", "Updated"),
    "error": ("错误", "Error"),
    "landed": ("确认已发布", "It did land"),
    "landed_hint": ("平台编号或链接", "Remote id or URL"),
    "resend": ("重新发送", "Resend"),
    "resend_hint": ("不查询平台，直接再发一次（可能重复）", "Send again without asking the platform (may duplicate)"),
    "confirm_title": ("确认重发", "Confirm replay"),
    "confirm_text": ("将重发 {n} 条投递，渠道：{channels}。", "Replay {n} deliveries on {channels}."),
    "confirm_none": ("没有可重发的投递。", "Nothing to replay."),
    "confirm_refused": ("以下投递不会重发：", "These will not be replayed:"),
    "confirm_yes": ("确认重发", "Replay them"),
    "confirm_no": ("返回", "Back"),
    "flash_requeued": ("已重新排队 {n} 条投递。", "{n} deliveries re-queued."),
    "flash_landed": ("已标记为已发布。", "Marked as delivered."),
    "flash_not_unknown": (
        "该投递已不是“结果未知”状态，未作更改。",
        "That delivery is no longer unknown: nothing changed.",
    ),
    "flash_paused": ("渠道已暂停。", "Channel paused."),
    "flash_resumed": ("渠道已恢复。", "Channel resumed."),
    "flash_bad_input": ("输入有误：{problem}", "Bad input: {problem}"),
    "bad_input": ("输入有误：{problem}", "Bad input: {problem}"),
    "channels_title": ("渠道健康", "Channel health"),
    "ch_kind": ("类型", "Kind"),
    "ch_circuit": ("通道", "Circuit"),
    "ch_circuit_note": (
        "没有独立的熔断器：通道状态即渠道的暂停状态。",
        "There is no circuit breaker: the circuit shows the channel's pause state.",
    ),
    "ch_open": ("畅通", "open"),
    "ch_paused": ("已暂停", "paused"),
    "ch_paused_until": ("暂停至 {time}", "paused until {time}"),
    "ch_paused_forever": ("暂停至人工恢复", "paused until resumed"),
    "ch_reason": ("原因", "Reason"),
    "ch_depth": ("队列", "Queue"),
    "ch_last_hour": ("最近一小时", "Last hour"),
    "ch_success": ("成功率", "Success rate"),
    "ch_latency": ("平均耗时", "Mean latency"),
    "ch_attempts": ("尝试 {n} 次", "{n} attempts"),
    "ch_no_attempts": ("最近一小时没有尝试", "No attempts in the last hour"),
    "ch_pause": ("暂停", "Pause"),
    "ch_resume": ("恢复", "Resume"),
    "ch_for": ("时长", "For"),
    "ch_until_resumed": ("直到恢复", "until resumed"),
    "ch_reason_default": ("运营人员暂停", "paused by an operator"),
    "ch_chart": (
        "每 5 分钟一格：柱高为成功率（悬停可见次数与耗时）",
        "One bar per 5 minutes: height is the success rate (hover for counts and latency)",
    ),
    "not_found": ("页面不存在", "Page not found"),
}


def pick_lang(value: str | None) -> str:
    """``en`` or the default; anything unknown falls back to Chinese rather than failing."""
    return value if value in LANGS else DEFAULT_LANG


def translate(lang: str, key: str, **params: object) -> str:
    zh, en = TEXTS[key]
    text = en if lang == "en" else zh
    return text.format(**params) if params else text
