"""What the simulated users send: the original load tests' scenario, as plain data."""

from __future__ import annotations

import random
import uuid

# The original office test drew from 25 work questions and 10 that want a web search.
WORK_QUESTIONS = (
    "회의록을 잘 쓰는 방법을 알려주세요.",
    "주간 업무 보고서 양식을 만들어 주세요.",
    "프로젝트 일정이 밀렸을 때 팀장에게 보고하는 메일을 써 주세요.",
    "신입 사원 온보딩 체크리스트를 정리해 주세요.",
    "고객 불만 메일에 정중하게 답장하는 방법을 알려주세요.",
    "엑셀에서 VLOOKUP과 XLOOKUP의 차이를 설명해 주세요.",
    "효율적인 회의 진행 방법 다섯 가지를 알려주세요.",
    "업무 우선순위를 정하는 방법을 알려주세요.",
    "분기별 성과 평가 자기 평가서를 쓰는 요령을 알려주세요.",
    "거래처에 견적서를 보내는 메일 초안을 작성해 주세요.",
    "재택근무 생산성을 높이는 방법을 알려주세요.",
    "프레젠테이션 자료를 구성하는 순서를 알려주세요.",
    "팀 내 갈등을 해결하는 대화 방법을 알려주세요.",
    "출장 경비 정산 절차를 정리해 주세요.",
    "업무 인수인계 문서에 들어가야 할 항목을 알려주세요.",
    "사내 공지문을 간결하게 쓰는 방법을 알려주세요.",
    "KPI와 OKR의 차이를 설명해 주세요.",
    "연차 사용 계획을 상사에게 요청하는 메일을 써 주세요.",
    "신규 서비스 기획서의 목차를 만들어 주세요.",
    "데이터 분석 결과를 보고서로 정리하는 방법을 알려주세요.",
    "협업 툴을 도입할 때 고려할 점을 알려주세요.",
    "면접관으로서 물어볼 만한 질문을 알려주세요.",
    "업무 중 실수를 했을 때 사과 메일을 써 주세요.",
    "예산 계획서를 작성하는 방법을 알려주세요.",
    "시간 관리에 도움이 되는 습관을 알려주세요.",
)
SEARCH_QUESTIONS = (
    "오늘 서울 날씨는 어떤가요?",
    "최근 원달러 환율 동향을 알려주세요.",
    "올해 최저임금은 얼마인가요?",
    "최근 발표된 인공지능 관련 정책을 알려주세요.",
    "이번 주 주요 경제 뉴스를 요약해 주세요.",
    "최신 엑셀 업데이트 기능을 알려주세요.",
    "요즘 많이 쓰는 협업 툴 순위를 알려주세요.",
    "올해 공휴일 일정을 알려주세요.",
    "최근 반도체 시장 전망을 알려주세요.",
    "이번 달 소비자물가지수 발표 내용을 알려주세요.",
)

CHARACTER = {
    "input_data": "*I wave at Rachel with a smile.*",
    "character_name": "Rachel",
    "greeting": "*Rachel stands nervously at the lectern, adjusting her notes...*",
    "context": "Rachel is a shy 19 year old student who loves astronomy. She speaks softly, "
               "blushes easily and gets excited when someone asks about the stars.",
}


def office_body(user_id: str, db_id: str, rng: random.Random,
                google_access_ratio: float) -> dict:
    """One office question; `google_access` is on for about `google_access_ratio` of them."""
    question = rng.choice(WORK_QUESTIONS + SEARCH_QUESTIONS)
    return {"input_data": question, "google_access": rng.random() < google_access_ratio,
            "db_id": db_id, "user_id": user_id}


def character_body(user_id: str, db_id: str) -> dict:
    return {**CHARACTER, "db_id": db_id, "user_id": user_id}


def new_db_id() -> str:
    return str(uuid.uuid4())
